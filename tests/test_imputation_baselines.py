"""Spatial imputation baselines: SpaGE-style beats the reference mean on marker genes, held-out genes never leak
from the spatial data, the size-factor rule holds, inputs stay untouched, and every bad input is named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from opencellplm.baselines import BaselineResult, reference_mean, shared_genes, spage_style
from opencellplm.baselines.imputation import _spage_weights
from opencellplm.data.reader import open_h5ad
from opencellplm.metrics import imputation_scores

N_GENES = 30
#: Three marker genes per cluster (raised 10x in it): GENE0-2 for cluster 0, GENE3-5 for 1, GENE6-8 for 2.
MARKERS = [[f"GENE{3 * c + i}" for i in range(3)] for c in range(3)]
#: One marker per cluster and a gene of no cluster: the genes to predict.
TARGETS = ["GENE0", "GENE3", "GENE6", "GENE20"]


def clustered_cells(n_cells: int, seed: int) -> AnnData:
    """Poisson counts of cells from 3 clusters (balanced) with markers, library sizes spread 4-fold."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.5, 2.0, size=N_GENES)
    clusters = np.arange(n_cells) % 3
    profile = np.tile(base, (3, 1))
    for c, markers in enumerate(MARKERS):
        profile[c, [int(g[4:]) for g in markers]] *= 10.0
    profile /= profile.sum(axis=1, keepdims=True)
    library = rng.uniform(150, 600, size=n_cells)
    counts = rng.poisson(library[:, None] * profile[clusters]).astype(np.float32)
    return AnnData(
        sp.csr_matrix(counts),
        obs=pd.DataFrame({"cluster": clusters.astype(str)}, index=[f"c{seed}_{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"GENE{g}" for g in range(N_GENES)]),
    )


@pytest.fixture(scope="module")
def pair() -> tuple[AnnData, AnnData]:
    """A reference of 150 cells with every gene; a spatial panel of 90 cells of the same clusters with 20 of them
    (the targets among them, as held-out genes are), in another order."""
    reference = clustered_cells(150, seed=0)
    cells = clustered_cells(90, seed=1)
    panel = TARGETS + [f"GENE{g}" for g in range(N_GENES) if f"GENE{g}" not in TARGETS][:16]
    return cells[:, panel[::-1]].copy(), reference


def test_spage_beats_the_reference_mean_on_marker_genes(pair):
    spatial, reference = pair
    mean = reference_mean(spatial, reference, TARGETS)
    spage = spage_style(spatial, reference, TARGETS, k=20)
    truth = spatial[:, TARGETS].X
    mean_scores = imputation_scores(truth, mean.prediction, genes=TARGETS).per_gene
    spage_scores = imputation_scores(truth, spage.prediction, genes=TARGETS).per_gene
    for gene in ("GENE0", "GENE3", "GENE6"):
        assert spage_scores.loc[gene, "pearson"] > 0.7
        assert spage_scores.loc[gene, "pearson"] > mean_scores.loc[gene, "pearson"] + 0.3
        assert spage_scores.loc[gene, "rmse"] < mean_scores.loc[gene, "rmse"]


def test_results_shape_and_params(pair):
    spatial, reference = pair
    for result in (reference_mean(spatial, reference, TARGETS), spage_style(spatial, reference, TARGETS, n_pv=8)):
        assert isinstance(result, BaselineResult) and result.seconds > 0
        assert result.prediction.shape == (90, 4) and result.prediction.dtype == np.float32
        assert np.all(np.isfinite(result.prediction)) and result.prediction.min() >= 0
        assert result.params["n_shared_genes"] == 16 and result.params["n_genes"] == 4
    assert result.name == "spage_style" and result.params["n_pv"] == 8 and result.params["k"] == 50
    assert 1 <= result.params["n_pv_effective"] <= 8 and len(result.params["pv_similarity"]) == 8
    assert shared_genes(spatial, reference, TARGETS) == [g for g in spatial.var_names if g not in TARGETS]


def test_n_pv_and_k_are_capped_and_recorded(pair):
    spatial, reference = pair
    result = spage_style(spatial[:, :7], reference[:12], ["GENE1"], n_pv=30, k=50)
    assert result.params["n_shared_genes"] == 7
    assert result.params["n_pv"] == 7 and result.params["k"] == 12


@pytest.mark.parametrize("method", [reference_mean, spage_style])
def test_target_genes_are_never_read_from_the_spatial_data(pair, method):
    spatial, reference = pair
    before = method(spatial, reference, TARGETS).prediction
    changed = spatial.copy()
    x = changed.X.toarray()
    x[:, changed.var_names.get_indexer(TARGETS)] = np.nan  # not even checked
    changed.X = x
    np.testing.assert_array_equal(method(changed, reference, TARGETS).prediction, before)


def test_size_factor_rule_by_hand():
    """p = the mean of the reference cells' profiles over all their genes; s = spatial total on the shared genes /
    p summed over them."""
    reference = AnnData(
        np.array([[1, 1, 0, 2], [0, 2, 2, 0]], dtype=np.float32), var=pd.DataFrame(index=["a", "b", "c", "t"])
    )
    # profiles (1,1,0,2)/4 and (0,2,2,0)/4; mean p = (0.125, 0.375, 0.25, 0.25); on the shared a, b: 0.5
    spatial = AnnData(
        np.array([[3, 1, 99], [0, 0, 5], [1, 0, 0]], dtype=np.float32), var=pd.DataFrame(index=["a", "b", "t"])
    )
    result = reference_mean(spatial, reference, ["t", "c"])
    expected_s = np.array([4 / 0.5, 0.0, 1 / 0.5])
    np.testing.assert_allclose(result.prediction, np.outer(expected_s, [0.25, 0.25]), rtol=1e-6)
    assert result.params["n_shared_genes"] == 2


def test_spage_prediction_is_one_reference_profile_at_the_spatial_depth_with_one_neighbour(pair):
    spatial, reference = pair
    prediction = spage_style(spatial, reference, TARGETS, k=1).prediction
    shared = shared_genes(spatial, reference, TARGETS)
    counts = reference.X.toarray()
    profiles = counts / counts.sum(axis=1, keepdims=True)
    on_shared = profiles[:, reference.var_names.get_indexer(shared)].sum(axis=1)
    on_targets = profiles[:, reference.var_names.get_indexer(TARGETS)]
    depth = spatial[:, shared].X.sum(axis=1).A1
    for i in range(spatial.n_obs):
        candidates = on_targets * (depth[i] / on_shared)[:, None]  # every reference cell as the neighbour
        assert np.isclose(candidates, prediction[i], rtol=1e-5).all(axis=1).any()


def test_spage_prediction_follows_the_spatial_depth(pair):
    spatial, reference = pair
    before = spage_style(spatial, reference, TARGETS).prediction
    deeper = spatial.copy()
    x = deeper.X.toarray()
    deepest = int(np.argmax(deeper[:, shared_genes(spatial, reference, TARGETS)].X.sum(axis=1).A1))
    x[deepest] *= 2.0  # the deepest cell stays the deepest: the median depth, and every other cell, are unchanged
    deeper.X = sp.csr_matrix(x)
    after = spage_style(deeper, reference, TARGETS).prediction
    np.testing.assert_allclose(after[deepest], 2.0 * before[deepest], rtol=1e-5)
    np.testing.assert_allclose(np.delete(after, deepest, 0), np.delete(before, deepest, 0), rtol=1e-5)


def test_spage_weights_follow_spage():
    distances = np.array([[0.2, 0.3, 0.5], [0.5, 1.2, 1.5], [1.0, 1.5, 1.9], [0.0, 0.0, 1.0]])
    weights, n_fallback = _spage_weights(distances)
    np.testing.assert_allclose(weights[0], [0.4, 0.35, 0.25])  # (1 - d / sum(d)) / (n - 1)
    np.testing.assert_allclose(weights[1], [1.0, 0.0, 0.0])  # one close neighbour
    np.testing.assert_allclose(weights[2], [1 / 3, 1 / 3, 1 / 3])  # none closer than 1: equal weights
    np.testing.assert_allclose(weights[3], [0.5, 0.5, 0.0])  # all close ones at distance 0
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    assert n_fallback == 1


def test_layers_dense_sparse_and_backed_agree_and_inputs_stay_unchanged(pair, tmp_path):
    spatial, reference = pair
    expected = {m: m(spatial, reference, TARGETS).prediction for m in (reference_mean, spage_style)}
    counts = {"counts": spatial.X.toarray()}
    dense_spatial = AnnData(np.zeros(spatial.shape, dtype=np.float32), obs=spatial.obs, var=spatial.var, layers=counts)
    layered_reference = reference.copy()
    layered_reference.layers["counts"] = reference.X.copy()
    layered_reference.X = sp.csr_matrix(reference.shape, dtype=np.float32)
    x_before = dense_spatial.layers["counts"].copy()
    path = tmp_path / "spatial.h5ad"
    spatial.write_h5ad(path)
    for method, prediction in expected.items():
        layered = method(
            dense_spatial, layered_reference, TARGETS, spatial_layer="counts", reference_layer="counts"
        ).prediction
        np.testing.assert_allclose(layered, prediction, rtol=1e-6)
        with open_h5ad(path) as backed:
            np.testing.assert_allclose(method(backed, reference, TARGETS).prediction, prediction, rtol=1e-6)
    np.testing.assert_array_equal(dense_spatial.layers["counts"], x_before)
    assert not dense_spatial.X.any() and layered_reference.X.nnz == 0 and "counts" in layered_reference.layers


def test_errors_name_the_problem(pair):
    spatial, reference = pair
    renamed = spatial.copy()
    renamed.var_names = [f"x{i}" for i in range(renamed.n_vars)]
    with pytest.raises(ValueError, match=r"spatial \(20 genes, e.g. 'x0'.*reference \(30 genes, e.g. 'GENE0'"):
        reference_mean(renamed, reference, TARGETS)
    with pytest.raises(ValueError, match=r"share no gene outside the 4 target genes \(4 shared in all\)"):
        reference_mean(spatial[:, TARGETS], reference, TARGETS)
    with pytest.raises(ValueError, match=r"2 of the 3 target genes are not in reference.var_names: 'NOPE', 'x'"):
        spage_style(spatial, reference, ["GENE0", "NOPE", "x"])
    with pytest.raises(ValueError, match="share 1 gene.*'GENE1'.*needs at least 2"):
        spage_style(spatial[:, ["GENE0", "GENE1"]], reference, ["GENE0"])
    with pytest.raises(ValueError, match="genes is empty"):
        reference_mean(spatial, reference, [])
    with pytest.raises(ValueError, match="genes repeats 1 gene name.*'GENE0'"):
        reference_mean(spatial, reference, ["GENE0", "GENE0"])
    with pytest.raises(TypeError, match="not a single string"):
        reference_mean(spatial, reference, "GENE0")
    with pytest.raises(TypeError, match="spatial must be an AnnData, got ndarray"):
        reference_mean(np.ones((2, 2)), reference, TARGETS)
    repeated = reference.copy()
    repeated.var_names = ["GENE1"] + list(reference.var_names[1:])
    with pytest.raises(ValueError, match=r"reference.var_names repeats 1 gene name\(s\) \('GENE1'\)"):
        reference_mean(spatial, repeated, TARGETS)
    negative = spatial.copy()
    negative.X = -negative.X
    with pytest.raises(ValueError, match="spatial.X holds negative or non-finite values on the shared genes"):
        reference_mean(negative, reference, TARGETS)
    bad_reference = reference.copy()
    bad_reference.X = -bad_reference.X
    with pytest.raises(ValueError, match="reference: X holds negative or non-finite"):
        reference_mean(spatial, bad_reference, TARGETS)
    empty_reference = reference.copy()
    empty_reference.X = sp.csr_matrix(reference.shape, dtype=np.float32)
    with pytest.raises(ValueError, match="every reference cell has a total count of 0"):
        reference_mean(spatial, empty_reference, TARGETS)
    with pytest.raises(ValueError, match="spatial has no cell"):
        reference_mean(spatial[:0], reference, TARGETS)
    with pytest.raises(KeyError, match="layer 'counts' not found"):
        reference_mean(spatial, reference, TARGETS, spatial_layer="counts")
    for kwargs, message in (
        ({"n_pv": 0}, "n_pv must be a positive integer"),
        ({"k": 2.5}, "k must be a positive integer"),
        ({"min_similarity": 1.0}, r"min_similarity must lie in \[0, 1\)"),
    ):
        with pytest.raises(ValueError, match=message):
            spage_style(spatial, reference, TARGETS, **kwargs)
    no_shared_counts = reference.copy()
    x = no_shared_counts.X.toarray()
    x[:, reference.var_names.get_indexer(shared_genes(spatial, reference, TARGETS))] = 0
    no_shared_counts.X = sp.csr_matrix(x)
    with pytest.raises(ValueError, match="no reference cell has counts on the 16 shared genes"):
        spage_style(spatial, no_shared_counts, TARGETS)
