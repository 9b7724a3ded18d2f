"""Baselines: they beat chance on separable synthetic data, read X or a layer, dense, sparse or backed, never
modify their input, and name their extra when it is missing."""

from __future__ import annotations

import sys
import types

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from opencellplm import baselines
from opencellplm.data.reader import open_h5ad
from opencellplm.metrics import classification_scores, denoising_scores, hide_counts
from opencellplm.testing import synthetic_adata


def dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def snapshot(adata: AnnData) -> dict:
    return {
        "X": dense(adata.X).copy(),
        "layers": {k: dense(v).copy() for k, v in adata.layers.items()},
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "obsm": {k: np.array(v) for k, v in adata.obsm.items()},
        "uns": set(adata.uns),
        "sparse": sp.issparse(adata.X),
    }


def assert_unchanged(adata: AnnData, before: dict) -> None:
    after = snapshot(adata)
    np.testing.assert_array_equal(after["X"], before["X"])
    assert after["layers"].keys() == before["layers"].keys()
    for key, value in before["layers"].items():
        np.testing.assert_array_equal(after["layers"][key], value)
    assert after["obs"].equals(before["obs"]) and after["var"].equals(before["var"])
    assert after["obsm"].keys() == before["obsm"].keys() and after["uns"] == before["uns"]
    assert after["sparse"] == before["sparse"]


def knn_accuracy(embedding: np.ndarray, labels) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return cross_val_score(KNeighborsClassifier(15), embedding, labels, cv=5).mean()


@pytest.fixture(scope="module")
def split():
    """240 training and 120 test cells of 4 types; the test set's genes in another order, one gene missing."""
    adata = synthetic_adata(360, 150, n_types=4, seed=1)
    train, test = adata[:240].copy(), adata[240:].copy()
    order = np.random.default_rng(0).permutation(test.n_vars)[:-1]
    return train, test[:, order].copy()


@pytest.mark.parametrize("sparse", [True, False])
def test_pca_embedding_separates_types_and_leaves_the_input_alone(sparse):
    adata = synthetic_adata(240, 150, sparse=sparse)
    before = snapshot(adata)
    result = baselines.pca_embedding(adata, n_comps=20, n_top_genes=100)
    assert_unchanged(adata, before)
    assert result.name == "pca" and result.seconds > 0
    assert result.prediction.shape == (240, 20) and np.isfinite(result.prediction).all()
    assert result.params["n_top_genes"] == 100
    assert knn_accuracy(result.prediction, adata.obs["cell_type"]) > 0.8  # chance: 0.25


def test_pca_embedding_reads_a_layer_and_copes_with_few_genes():
    adata = synthetic_adata(60, 30)
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))  # X is not counts: the layer must be read
    from_layer = baselines.pca_embedding(adata, layer="counts")  # 50 components and 2000 genes asked
    assert from_layer.prediction.shape == (60, 29) and from_layer.params["n_top_genes"] == 30
    plain = synthetic_adata(60, 30)
    np.testing.assert_allclose(
        np.abs(from_layer.prediction), np.abs(baselines.pca_embedding(plain).prediction), rtol=1e-3, atol=1e-3
    )
    with pytest.raises(KeyError, match="counts2"):
        baselines.pca_embedding(adata, layer="counts2")


def test_baselines_read_backed_files(tmp_path):
    adata = synthetic_adata(80, 40)
    adata.write_h5ad(tmp_path / "cells.h5ad")
    with open_h5ad(tmp_path / "cells.h5ad") as backed:
        result = baselines.unchanged(backed)
        embedding = baselines.pca_embedding(backed, n_comps=5)
    np.testing.assert_array_equal(dense(result.prediction), adata.X.toarray())
    np.testing.assert_allclose(
        np.abs(embedding.prediction), np.abs(baselines.pca_embedding(adata, n_comps=5).prediction), atol=1e-4
    )


@pytest.mark.parametrize("method", [baselines.celltypist_style, baselines.l1_logistic_cv, baselines.knn_on_pca])
def test_annotation_baselines_beat_chance(method, split):
    train, test = split
    before_train, before_test = snapshot(train), snapshot(test)
    result = method(train, test, labels_key="cell_type")
    assert_unchanged(train, before_train)
    assert_unchanged(test, before_test)
    assert result.classes == ("type_0", "type_1", "type_2", "type_3")
    assert result.prediction.shape == (test.n_obs,) and set(result.prediction) <= set(result.classes)
    assert result.probabilities.shape == (test.n_obs, 4)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(
        result.prediction, np.array(result.classes)[result.probabilities.argmax(axis=1)]
    )  # the label is the most probable class
    assert result.params["n_genes"] <= 149  # the genes both sets have
    assert classification_scores(test.obs["cell_type"], result.prediction).macro_f1 > 0.8  # chance: about 0.25


def test_annotation_baselines_skip_unlabelled_cells_and_check_their_input(split):
    train, test = split
    train = train.copy()
    train.obs.loc[train.obs_names[:10], "cell_type"] = np.nan
    result = baselines.celltypist_style(train, test, labels_key="cell_type")
    assert set(result.classes) == {"type_0", "type_1", "type_2", "type_3"}
    with pytest.raises(KeyError, match="cell_type"):
        baselines.knn_on_pca(train, test, labels_key="celltype")
    other = test.copy()
    other.var_names = [f"X{i}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match="share no gene"):
        baselines.celltypist_style(train, other, labels_key="cell_type")


def test_l1_logistic_cv_reports_the_chosen_c(split):
    train, test = split
    result = baselines.l1_logistic_cv(train, test, labels_key="cell_type", cs=(0.1, 1.0), solver="saga", max_iter=50)
    assert result.params["C"] in (0.1, 1.0) and set(result.params["cv_f1"]) == {0.1, 1.0}
    assert result.params["C"] == max(result.params["cv_f1"], key=lambda c: (result.params["cv_f1"][c], -c))


@pytest.mark.parametrize("sparse", [True, False])
def test_denoising_baselines(sparse):
    truth = synthetic_adata(200, 100, sparse=sparse)
    corrupted_x, mask = hide_counts(truth.X, seed=0)
    corrupted = truth.copy()
    corrupted.X = corrupted_x
    before = snapshot(corrupted)

    same = baselines.unchanged(corrupted)
    np.testing.assert_array_equal(dense(same.prediction), dense(corrupted_x))
    smoothed = baselines.knn_smoothing(corrupted, n_neighbors=10, n_comps=10)
    assert_unchanged(corrupted, before)

    prediction = smoothed.prediction
    assert prediction.shape == truth.shape and prediction.dtype == np.float32 and (prediction >= 0).all()
    # each cell keeps its own library size
    np.testing.assert_allclose(prediction.sum(axis=1), dense(corrupted_x).sum(axis=1), rtol=1e-4)
    baseline = denoising_scores(truth.X, same.prediction, mask)
    assert denoising_scores(truth.X, prediction, mask).rmse < baseline.rmse


def test_knn_smoothing_with_one_neighbour_is_the_input():
    adata = synthetic_adata(30, 20)
    result = baselines.knn_smoothing(adata, n_neighbors=1, n_comps=5)
    np.testing.assert_allclose(result.prediction, adata.X.toarray(), rtol=1e-5)


@pytest.mark.parametrize(
    ("call", "module", "message"),
    [
        (
            lambda a: baselines.scvi_embedding(a),
            "scvi",
            r"scVI needs the scvi extra: pip install 'opencellplm\[scvi\]' "
            r"\(in a clone of the repository: pip install -e '\.\[scvi\]'\)",
        ),
        (lambda a: baselines.scvi_denoise(a), "scvi", r"pip install 'opencellplm\[scvi\]'"),
        (
            lambda a: baselines.magic(a),
            "magic",
            r"MAGIC needs the magic extra: pip install 'opencellplm\[magic\]' .*pip install -e '\.\[magic\]'",
        ),
        (
            lambda a: baselines.celltypist(a, a, labels_key="cell_type"),
            "celltypist",
            r"CellTypist needs the baselines extra: pip install 'opencellplm\[baselines\]'",
        ),
        (
            lambda a: baselines.scanvi(a, a, labels_key="cell_type"),
            "scvi",
            r"scANVI needs the scvi extra: pip install 'opencellplm\[scvi\]'",
        ),
        (
            lambda a: baselines.imputation.gimvi(a, a, list(a.var_names[:2])),
            "scvi",
            r"gimVI needs the scvi extra: pip install 'opencellplm\[scvi\]'",
        ),
        (
            lambda a: baselines.imputation.tangram(a, a, list(a.var_names[:2])),
            "tangram",
            r"Tangram needs the baselines extra: pip install 'opencellplm\[baselines\]'",
        ),
    ],
)
def test_optional_baselines_name_their_extra(monkeypatch, call, module, message):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if the package were absent
    with pytest.raises(ImportError, match=message):
        call(synthetic_adata(20, 10))


def test_magic_refuses_the_other_module_named_magic(monkeypatch):
    monkeypatch.setitem(sys.modules, "magic", types.ModuleType("magic"))  # python-magic has no MAGIC
    with pytest.raises(ImportError, match=r"not MAGIC.*opencellplm\[magic\]"):
        baselines.magic(synthetic_adata(20, 10))


def test_knn_on_pca_follows_the_standard_recipe_and_beats_the_scaled_one():
    """scanpy's recipe (log-normalised HVGs, PCA unscaled, 15-NN) against the one it replaced (genes scaled to unit
    variance before the PCA), on real PBMCs with 140 training cells (the demo's split size), three splits."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    from opencellplm import datasets

    adata = datasets.pbmc68k_reduced()  # ships with scanpy: no download
    ours, scaled = [], []
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(adata.n_obs)
        train, test = adata[order[:140]].copy(), adata[order[140:]].copy()
        truth = test.obs["cell_type"].astype(str)
        ours.append(classification_scores(truth, baselines.knn_on_pca(train, test, labels_key="cell_type").prediction))
        x_train, x_test, y, _ = baselines.annotation._annotation_inputs(train, test, labels_key="cell_type", layer=None)
        # the old recipe (all 765 genes are HVGs here)
        x_train, x_test = baselines.annotation._standardize(x_train, x_test)
        pca = PCA(50, random_state=0).fit(x_train)
        knn = KNeighborsClassifier(15).fit(pca.transform(x_train), y)
        scaled.append(classification_scores(truth, knn.predict(pca.transform(x_test))))
    ours_f1, scaled_f1 = np.mean([s.macro_f1 for s in ours]), np.mean([s.macro_f1 for s in scaled])
    assert ours_f1 > scaled_f1 + 0.1, (ours_f1, scaled_f1)  # measured: 0.44 against 0.23


def test_annotation_baselines_refuse_labels_of_mixed_types(split):
    train, test = split
    train = train.copy()
    train.obs["mixed"] = pd.Series([[1, "1", True][i % 3] for i in range(train.n_obs)], index=train.obs_names)
    with pytest.raises(ValueError, match=r"obs column 'mixed' mixes label types \(bool: True; int: 1; str: '1'\)"):
        baselines.knn_on_pca(train, test, labels_key="mixed")


@pytest.mark.baselines
def test_celltypist_itself_learns_the_training_labels():
    """Needs the baselines extra (pip install -e '.[baselines]'; run with pytest -m baselines)."""
    pytest.importorskip("celltypist", reason="the baselines extra is not installed (pip install -e '.[baselines]')")
    adata = synthetic_adata(240, 120, n_types=3, seed=5)
    train, test = adata[:180].copy(), adata[180:].copy()
    import logging

    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    result = baselines.celltypist(train, test, labels_key="cell_type")
    assert (list(root.handlers), root.level) == before  # celltypist's basicConfig(level=INFO) is undone
    truth = test.obs["cell_type"].astype(str).to_numpy()
    assert set(result.prediction) <= set(result.classes) == set(adata.obs["cell_type"].astype(str))
    assert (result.prediction == truth).mean() > 0.8  # chance is 1/3: the types are separable
    assert result.probabilities.shape == (60, 3) and result.params["package"].startswith("celltypist ")


@pytest.mark.baselines
def test_tangram_itself_maps_the_reference_onto_the_spatial_cells():
    """Needs the baselines extra (pip install -e '.[baselines]'; run with pytest -m baselines)."""
    pytest.importorskip("tangram", reason="the baselines extra is not installed (pip install -e '.[baselines]')")
    import logging

    reference = synthetic_adata(200, 80, seed=1)
    spatial = synthetic_adata(120, 80, spatial=True, seed=2)[:, :60].copy()
    genes = list(reference.var_names[60:70])
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    result = baselines.imputation.tangram(spatial, reference, genes, num_epochs=100)
    assert (list(root.handlers), root.level) == before  # tangram's INFO set-up of the root logger is undone
    assert result.prediction.shape == (120, 10) and np.isfinite(result.prediction).all()
    assert (result.prediction >= 0).all() and result.params["package"].startswith("tangram-sc ")


@pytest.mark.baselines
def test_scvi_and_magic_run_with_the_installed_packages():
    """Needs the baselines extra (pip install -e '.[baselines]'; run with pytest -m baselines)."""
    pytest.importorskip("scvi", reason="the baselines extra is not installed (pip install -e '.[baselines]')")
    pytest.importorskip("magic", reason="the baselines extra is not installed (pip install -e '.[baselines]')")
    adata = synthetic_adata(150, 60, seed=3)
    assert baselines.scvi_embedding(adata, max_epochs=3).prediction.shape == (150, 10)
    for result in (baselines.scvi_denoise(adata, max_epochs=3), baselines.magic(adata)):
        assert result.prediction.shape == (150, 60) and np.isfinite(result.prediction).all()


@pytest.mark.baselines
def test_scanvi_labels_cells_it_never_saw():
    """Needs the scvi or baselines extra (pip install -e '.[baselines]'; run with pytest -m baselines)."""
    pytest.importorskip("scvi", reason="the baselines extra is not installed (pip install -e '.[baselines]')")
    adata = synthetic_adata(240, 120, n_types=3, seed=5)
    train, test = adata[:180].copy(), adata[180:].copy()
    result = baselines.scanvi(train, test, labels_key="cell_type", max_epochs=20)
    truth = test.obs["cell_type"].astype(str).to_numpy()
    assert (result.prediction == truth).mean() > 0.6  # chance is 1/3: the types are separable
    assert result.probabilities.shape == (60, 3) and result.params["seed"] == 0


@pytest.mark.baselines
def test_gimvi_imputes_the_reference_genes_in_the_spatial_cells():
    """Needs the scvi or baselines extra (pip install -e '.[baselines]'; run with pytest -m baselines)."""
    pytest.importorskip("scvi", reason="the baselines extra is not installed (pip install -e '.[baselines]')")
    reference = synthetic_adata(200, 80, seed=1)
    spatial = synthetic_adata(120, 80, spatial=True, seed=2)[:, :60].copy()
    genes = list(reference.var_names[60:70])
    result = baselines.imputation.gimvi(spatial, reference, genes, max_epochs=10)
    assert result.prediction.shape == (120, 10) and np.isfinite(result.prediction).all()
    assert (result.prediction >= 0).all() and result.params["max_epochs"] == 10


@pytest.mark.baselines
def test_harmony_scanorama_and_scvi_embed_cells_of_several_batches():
    """Needs the baselines extra (pip install -e '.[baselines]'; run with pytest -m baselines)."""
    pytest.importorskip("harmonypy", reason="the baselines extra is not installed (pip install -e '.[baselines]')")
    pytest.importorskip("scanorama", reason="the baselines extra is not installed (pip install -e '.[baselines]')")
    from opencellplm.baselines import integration
    from opencellplm.metrics.integration import integration_scores

    adata = synthetic_adata(300, 120, n_types=3, n_batches=2, seed=4)
    adata.X = adata.X.multiply(np.where(adata.obs["batch"] == "batch_1", 3.0, 1.0)[:, None]).tocsr()  # depth apart
    adata.X.data = np.round(adata.X.data)
    labels, batches = adata.obs["cell_type"].to_numpy(), adata.obs["batch"].to_numpy()
    pca = integration_scores(integration.pca_uncorrected(adata, batch_key="batch").prediction, labels, batches)
    harmony = integration_scores(integration.harmony(adata, batch_key="batch").prediction, labels, batches)
    assert harmony.ilisi >= pca.ilisi - 0.05 and harmony.nmi > 0.6, (harmony, pca)
    result = integration.scanorama(adata, batch_key="batch")
    assert result.prediction.shape == (300, 100) and np.isfinite(result.prediction).all()
    assert integration_scores(result.prediction, labels, batches).nmi > 0.6  # the types stay apart
    assert integration.scvi_integrated(adata, batch_key="batch").prediction.shape == (300, 10)


@pytest.mark.baselines
def test_gears_runs_end_to_end_given_a_go_file(tmp_path, monkeypatch):
    """Needs the baselines extra. The GO file here is made up (random terms): it checks the wrapper's plumbing
    (labels, split, working folder, output), not GEARS's accuracy, which needs the real file."""
    pytest.importorskip("gears", reason="the baselines extra is not installed (pip install -e '.[baselines]')")
    import pickle

    from opencellplm.data.perturbations import parse_labels
    from opencellplm.datasets.perturbseq_simulator import simulate_perturbseq
    from opencellplm.metrics import condition_means

    genes = [f"G{i}" for i in range(40)]
    adata = simulate_perturbseq(40, n_regulators=10, n_single=6, n_combo=3, cells_per_perturbation=12, gene_names=genes)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    found = sorted(set(labels))
    parsed = parse_labels(found, control="ctrl")
    test = [label for label in found if "+" in label][:2]
    train_cells = adata[~np.isin(labels, test)].copy()
    means = condition_means(train_cells, train_cells.obs["perturbation"].astype(str).to_numpy())
    rng = np.random.default_rng(0)
    with open(tmp_path / "gene2go_all.pkl", "wb") as handle:
        pickle.dump({g: {f"GO:{rng.integers(0, 30):07d}" for _ in range(4)} for g in genes}, handle)
    monkeypatch.chdir(tmp_path)  # GEARS's cache folder ./data must not appear here
    result = baselines.perturbation.gears(
        means, parsed, test, train_cells=train_cells, labels_key="perturbation", epochs=2, go_folder=str(tmp_path)
    )
    assert list(result.prediction.index) == test and np.isfinite(result.prediction.to_numpy()).all()
    assert result.fit_seconds is not None and result.params["epochs"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gene2go_all.pkl"]


@pytest.mark.baselines
def test_gears_without_its_go_file_fails_saying_where_to_put_it(monkeypatch):
    pytest.importorskip("gears", reason="the baselines extra is not installed (pip install -e '.[baselines]')")
    import pandas as pd

    monkeypatch.delenv("OPENCELLPLM_GEARS_DATA", raising=False)
    means = pd.DataFrame(np.ones((2, 3)), index=["ctrl", "A"], columns=["A", "B", "C"])
    from opencellplm.data.perturbations import parse_labels

    cells = AnnData(np.ones((4, 3), dtype=np.float32), obs=pd.DataFrame({"x": ["ctrl", "ctrl", "A", "A"]}))
    cells.var_names = ["A", "B", "C"]
    with pytest.raises(FileNotFoundError, match=r"gene2go_all.pkl .*OPENCELLPLM_GEARS_DATA is not set"):
        baselines.perturbation.gears(
            means, parse_labels(["ctrl", "A", "B"], control="ctrl"), ["B"], train_cells=cells, labels_key="x"
        )


def test_gears_refuses_bad_training_cells_whether_or_not_it_is_installed():
    from opencellplm.data.perturbations import parse_labels

    means = pd.DataFrame(np.ones((2, 3)), index=["ctrl", "A"], columns=["A", "B", "C"])
    parsed = parse_labels(["ctrl", "A", "B"], control="ctrl")
    cells = AnnData(np.ones((4, 3), dtype=np.float32), obs=pd.DataFrame({"x": ["ctrl", "ctrl", "A", "A"]}))
    cells.var_names = ["A", "B", "C"]
    with pytest.raises(KeyError, match="train_cells has no obs column 'label'"):
        baselines.perturbation.gears(means, parsed, ["B"], train_cells=cells, labels_key="label")
    with pytest.raises(ValueError, match=r"lacks 1 gene\(s\) of train_means: \['C'\]"):
        baselines.perturbation.gears(means, parsed, ["B"], train_cells=cells[:, :2].copy(), labels_key="x")


def test_an_installed_package_that_does_not_import_is_a_failure_not_a_missing_extra(tmp_path, monkeypatch):
    from opencellplm.baselines._common import BrokenPackage, import_package

    (tmp_path / "brokenpkg_for_test").mkdir()
    (tmp_path / "brokenpkg_for_test" / "__init__.py").write_text("from scvi._compat import Literal\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BrokenPackage, match=r"installed but does not import: ModuleNotFoundError"):
        import_package("brokenpkg_for_test", "Broken", "baselines")
    with pytest.raises(ImportError, match=r"Absent needs the baselines extra"):
        import_package("absentpkg_for_test", "Absent", "baselines")
