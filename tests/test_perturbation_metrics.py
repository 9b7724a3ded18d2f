"""Perturbation scores: condition means, top DE genes, per-perturbation metrics, on hand-computed examples."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats as st

from opencellplm.metrics import PerturbationScores, condition_means, perturbation_scores, top_de_genes

COUNTS = np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 4.0]])
LABELS = ["a", "a", "b"]
EXPECTED_MEANS = pd.DataFrame(
    [
        [(np.log1p(2500) + np.log1p(5000)) / 2, (np.log1p(7500) + np.log1p(5000)) / 2],
        [0.0, np.log1p(10000)],
    ],
    index=["a", "b"],
    columns=["g1", "g2"],
)


@pytest.mark.parametrize("kind", ["dense", "csr", "adata", "layer", "backed"])
def test_condition_means_by_hand(kind, tmp_path):
    if kind in ("dense", "csr"):
        counts = COUNTS if kind == "dense" else sp.csr_matrix(COUNTS)
        means = condition_means(counts, LABELS, genes=["g1", "g2"])
    else:
        adata = ad.AnnData(sp.csr_matrix(COUNTS, dtype=np.float32), obs=pd.DataFrame({"p": LABELS}, index=list("xyz")))
        adata.var_names = ["g1", "g2"]
        if kind == "layer":
            adata.layers["counts"] = adata.X.copy()
            adata.X = sp.csr_matrix(adata.shape, dtype=np.float32)
            means = condition_means(adata, "p", layer="counts")
        elif kind == "backed":
            adata.write_h5ad(tmp_path / "a.h5ad")
            means = condition_means(ad.read_h5ad(tmp_path / "a.h5ad", backed="r"), "p")
        else:
            means = condition_means(adata, adata.obs["p"])
    pd.testing.assert_frame_equal(means, EXPECTED_MEANS, check_names=False, rtol=1e-6)


def test_condition_means_sorted_labels_and_empty_cells():
    means = condition_means(np.array([[0.0, 0.0], [1.0, 1.0]]), ["z", "a"])
    assert list(means.index) == ["a", "z"] and list(means.columns) == [0, 1]
    np.testing.assert_allclose(means.loc["z"], 0.0)  # a cell without counts stays 0


def test_condition_means_errors():
    with pytest.raises(ValueError, match=r"labels must hold one label per cell \(3\), got shape \(2,\)"):
        condition_means(COUNTS, ["a", "b"])
    with pytest.raises(ValueError, match="labels has 1 missing values"):
        condition_means(COUNTS, ["a", None, "b"])
    with pytest.raises(ValueError, match="the counts hold negative values"):
        condition_means(-COUNTS, LABELS)
    with pytest.raises(ValueError, match="the counts hold NaN or infinite values"):
        condition_means(np.where(COUNTS > 3, np.nan, COUNTS), LABELS)
    with pytest.raises(ValueError, match="layer= applies to an AnnData"):
        condition_means(COUNTS, LABELS, layer="counts")
    with pytest.raises(ValueError, match="genes has 1 names but the counts have 2 columns"):
        condition_means(COUNTS, LABELS, genes=["g1"])
    adata = ad.AnnData(COUNTS.astype(np.float32))
    with pytest.raises(KeyError, match="labels 'p' is not an obs column"):
        condition_means(adata, "p")


def log_normalized(counts):
    return np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)


def test_top_de_genes_is_welch_t():
    rng = np.random.default_rng(0)
    counts = rng.poisson(5.0, size=(30, 12)).astype(float) + 1
    counts[:10, 3] *= 6  # "p1" raises gene 3
    counts[10:20, 7] = 1  # "p2" lowers gene 7
    labels = np.array(["p1"] * 10 + ["p2"] * 10 + ["ctrl"] * 10)
    top = top_de_genes(counts, labels, n_top=5)
    assert set(top) == {"p1", "p2"}
    log = log_normalized(counts)
    for label in ("p1", "p2"):
        t = st.ttest_ind(log[labels == label], log[labels == "ctrl"], equal_var=False).statistic
        np.testing.assert_array_equal(top[label], np.argsort(-np.abs(t), kind="stable")[:5])
        assert top[label].dtype == np.int64
    assert top["p1"][0] == 3 and top["p2"][0] == 7


def test_top_de_genes_zero_variance_scores_zero_and_n_top_capped():
    counts = np.array([[5, 1, 4], [5, 2, 3], [5, 1, 9], [5, 3, 1]], dtype=float)
    labels = ["p", "p", "ctrl", "ctrl"]
    counts[:, 0] = 0  # zero in every cell: no variance anywhere
    top = top_de_genes(counts, labels, n_top=10)
    assert len(top["p"]) == 3 and top["p"][-1] == 0  # gene 0 scores 0, ranked last


def test_top_de_genes_on_anndata_matches_the_matrix():
    rng = np.random.default_rng(1)
    counts = rng.poisson(3.0, size=(20, 8)).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts), obs=pd.DataFrame({"p": ["ctrl", "x"] * 10}, index=map(str, range(20))))
    by_column = top_de_genes(adata, "p", n_top=4)
    by_matrix = top_de_genes(counts, adata.obs["p"].to_numpy(), n_top=4)
    np.testing.assert_array_equal(by_column["x"], by_matrix["x"])


def test_top_de_genes_errors():
    with pytest.raises(ValueError, match="control label 'ctrl' not found among the labels"):
        top_de_genes(COUNTS, LABELS)
    with pytest.raises(ValueError, match=r"at least 2 cells per label; too few cells: \['b \(1\)'\]"):
        top_de_genes(COUNTS, ["ctrl", "ctrl", "b"])
    with pytest.raises(ValueError, match="n_top must be a positive integer"):
        top_de_genes(COUNTS, LABELS, control="a", n_top=0)


# --- perturbation_scores -------------------------------------------------------------------------------------------

GENES = ["g0", "g1", "g2", "g3"]
CONTROL = pd.Series([1.0, 2.0, 3.0, 4.0], index=GENES)
TRUTH = pd.DataFrame([[2.0, 2.0, 1.0, 4.0], [1.0, 3.0, 3.0, 6.0]], index=["A", "B"], columns=GENES)
TOP = {"A": np.array([0, 2]), "B": np.array([3, 1, 0])}


def test_perfect_prediction():
    extended = pd.concat([CONTROL, pd.Series({"g9": 1.0})])  # a control with more genes is fine
    scores = perturbation_scores(TRUTH.iloc[::-1], TRUTH, extended, TOP)  # order of predicted rows is free
    table = scores.per_perturbation
    np.testing.assert_allclose(table[["rmse", "rmse_top20"]], 0.0)
    np.testing.assert_allclose(table[["pearson_delta", "pearson_delta_top20", "direction_accuracy_top20"]], 1.0)
    assert list(table.index) == ["A", "B"] and list(table["n_top"]) == [2, 3]


def test_no_change_prediction_has_no_correlation():
    predicted = pd.DataFrame([CONTROL.to_numpy()] * 2, index=["A", "B"], columns=GENES)
    table = perturbation_scores(predicted, TRUTH, CONTROL, TOP).per_perturbation
    assert table["pearson_delta"].isna().all() and table["pearson_delta_top20"].isna().all()
    assert table.loc["A", "rmse"] == pytest.approx(np.sqrt((1 + 0 + 4 + 0) / 4))
    assert table.loc["A", "rmse_top20"] == pytest.approx(np.sqrt((1 + 4) / 2))
    assert table.loc["A", "direction_accuracy_top20"] == 0.0
    # B's top gene 0 does not change in truth: predicting no change there is right
    assert table.loc["B", "direction_accuracy_top20"] == pytest.approx(1 / 3)


def test_scores_by_hand():
    predicted = pd.DataFrame([[1.5, 2.0, 2.0, 5.0], [1.0, 2.5, 3.0, 3.0]], index=["A", "B"], columns=GENES)
    table = perturbation_scores(predicted, TRUTH, CONTROL.to_numpy(), TOP).per_perturbation
    d_pred_a, d_true_a = np.array([0.5, 0.0, -1.0, 1.0]), np.array([1.0, 0.0, -2.0, 0.0])
    assert table.loc["A", "rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1 + 1) / 4))
    assert table.loc["A", "pearson_delta"] == pytest.approx(np.corrcoef(d_pred_a, d_true_a)[0, 1])
    assert table.loc["A", "pearson_delta_top20"] == pytest.approx(1.0)  # two points
    assert table.loc["A", "direction_accuracy_top20"] == 1.0
    # B: top genes 3 (truth +2, predicted -1: wrong), 1 (+1, +0.5: right), 0 (0, 0: right)
    assert table.loc["B", "direction_accuracy_top20"] == pytest.approx(2 / 3)
    assert table.loc["B", "rmse_top20"] == pytest.approx(np.sqrt((9 + 0.25 + 0) / 3))


def test_gene_names_as_top_de_and_summary_by_group():
    top = {"A": ["g0", "g2"], "B": np.array(["g3", "g1", "g0"])}
    scores = perturbation_scores(TRUTH, TRUTH, CONTROL, top, groups={"A": "single_unseen", "B": "combo_seen2"})
    assert isinstance(scores, PerturbationScores)
    assert list(scores.per_perturbation["group"]) == ["single_unseen", "combo_seen2"]
    summary = scores.summary()
    assert list(summary.index) == ["combo_seen2", "single_unseen", "all"]
    assert summary.loc["all", ("rmse", "count")] == 2 and summary.loc["all", ("pearson_delta", "mean")] == 1.0
    assert list(scores.summary(by=None).index) == ["all"]
    assert list(perturbation_scores(TRUTH, TRUTH, CONTROL, top).summary().index) == ["all"]
    with pytest.raises(KeyError, match="no column 'batch' to group by"):
        scores.summary(by="batch")
    json.dumps(scores.to_dict())


def test_misaligned_inputs_are_named():
    with pytest.raises(ValueError, match=r"hold different labels: missing from predicted: \['B'\] \(1\)"):
        perturbation_scores(TRUTH.loc[["A"]], TRUTH, CONTROL, TOP)
    with pytest.raises(ValueError, match=r"not in truth: \['C'\] \(1\)"):
        perturbation_scores(pd.concat([TRUTH, TRUTH.loc[["A"]].rename(index={"A": "C"})]), TRUTH, CONTROL, TOP)
    with pytest.raises(ValueError, match=r"hold different genes: missing from predicted: \['g3'\]"):
        perturbation_scores(TRUTH.drop(columns="g3"), TRUTH, CONTROL, TOP)
    with pytest.raises(ValueError, match=r"control lacks 1 gene\(s\) of truth: \['g3'\]"):
        perturbation_scores(TRUTH, TRUTH, CONTROL.drop("g3"), TOP)
    with pytest.raises(ValueError, match="control has 3 values but truth has 4 genes"):
        perturbation_scores(TRUTH, TRUTH, CONTROL.to_numpy()[:3], TOP)
    with pytest.raises(ValueError, match=r"top_de lacks 1 label\(s\) of truth: \['B'\]"):
        perturbation_scores(TRUTH, TRUTH, CONTROL, {"A": TOP["A"]})
    with pytest.raises(ValueError, match=r"top_de\['A'\] holds positions outside 0..3"):
        perturbation_scores(TRUTH, TRUTH, CONTROL, TOP | {"A": np.array([4])})
    with pytest.raises(ValueError, match=r"top_de\['A'\] names genes not in truth: \['nope'\]"):
        perturbation_scores(TRUTH, TRUTH, CONTROL, TOP | {"A": ["nope"]})
    with pytest.raises(ValueError, match=r"groups lacks 1 label\(s\) of truth: \['B'\]"):
        perturbation_scores(TRUTH, TRUTH, CONTROL, TOP, groups={"A": "x"})
    with pytest.raises(ValueError, match="predicted holds NaN or infinite values"):
        perturbation_scores(TRUTH.replace(2.0, np.nan), TRUTH, CONTROL, TOP)
    with pytest.raises(ValueError, match="predicted must be a DataFrame"):
        perturbation_scores(TRUTH.to_numpy(), TRUTH, CONTROL, TOP)
