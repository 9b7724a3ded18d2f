"""Task metrics: clustering sweep, classification, hidden-count denoising, molecular cross-validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import confusion_matrix, f1_score, precision_score

from opencellplm.metrics import (
    DEFAULT_RESOLUTIONS,
    classification_scores,
    clustering_scores,
    denoising_scores,
    hide_counts,
    mcv_scores,
    molecular_split,
)
from opencellplm.testing import synthetic_adata


@pytest.fixture(scope="module")
def labelled():
    """Labels of 240 synthetic cells and an embedding that nearly encodes them (one-hot plus noise)."""
    labels = synthetic_adata(240, 20, n_types=4).obs["cell_type"].to_numpy()
    codes = np.unique(labels, return_inverse=True)[1]
    rng = np.random.default_rng(0)
    return labels, np.eye(4)[codes] * 5 + rng.normal(0.0, 0.3, size=(240, 4))


def test_clustering_the_truth_scores_near_one(labelled):
    labels, embedding = labelled
    scores = clustering_scores(embedding, labels)
    assert scores.best_ari > 0.95 and scores.best_nmi > 0.95
    assert scores.ari_fixed > 0.9 and scores.ari_at_nmi_choice > 0.95
    assert scores.resolutions == DEFAULT_RESOLUTIONS and scores.n_cells == 240
    # the best over resolutions is an upper bound of the honest figures
    assert scores.best_ari >= scores.ari_fixed and scores.best_ari >= scores.ari_at_nmi_choice
    assert scores.best_nmi >= scores.nmi_fixed
    assert scores.nmi[scores.nmi_chosen_resolution] == scores.best_nmi
    table = scores.table()
    assert list(table.index) == list(DEFAULT_RESOLUTIONS) and list(table.columns) == ["n_clusters", "ari", "nmi"]
    assert table.loc[1.0, "ari"] == scores.ari_fixed and table.loc[1.0, "n_clusters"] == scores.n_clusters[1.0]
    summary = json.loads(json.dumps(scores.to_dict()))
    assert summary["best_over_resolutions"]["ari"] == scores.best_ari
    assert "independently over the resolution sweep" in summary["best_over_resolutions"]["note"]
    assert summary["nmi_chosen_resolution"]["ari"] == scores.ari_at_nmi_choice


def test_clustering_a_random_embedding_scores_near_zero(labelled):
    labels, _ = labelled
    scores = clustering_scores(np.random.default_rng(1).normal(size=(240, 10)), labels, resolutions=(0.5, 1.0))
    assert scores.best_ari < 0.1 and scores.best_nmi < 0.15


def test_clustering_adds_the_fixed_resolution_and_leaves_out_missing_cells(labelled):
    labels, embedding = labelled
    embedding, labels = embedding.copy(), labels.astype(object)
    embedding[:5] = np.nan  # cells the model left out
    labels[5:8] = None
    labels[8] = np.nan
    scores = clustering_scores(embedding, labels, resolutions=(0.4,), fixed_resolution=0.8)
    assert scores.resolutions == (0.4, 0.8) and scores.fixed_resolution == 0.8
    assert (scores.n_cells, scores.n_missing_embedding, scores.n_missing_label) == (231, 5, 4)
    assert scores.best_ari > 0.95


def test_clustering_refuses_what_it_cannot_score(labelled):
    labels, embedding = labelled
    with pytest.raises(ValueError, match="at least 2"):
        clustering_scores(embedding, np.full(240, "one type"))
    with pytest.raises(ValueError, match="too few"):
        clustering_scores(embedding[:10], labels[:10])
    with pytest.raises(ValueError, match="rows"):
        clustering_scores(embedding, labels[:-1])
    with pytest.raises(ValueError, match="infinite"):
        clustering_scores(np.full((240, 2), np.inf), labels)


def test_classification_scores_match_sklearn_and_name_the_confusion_matrix():
    y_true = ["a", "a", "a", "b", "b", "c", "c", "c"]
    y_pred = ["a", "b", "a", "b", "b", "c", "a", "b"]
    scores = classification_scores(y_true, y_pred)
    assert scores.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert scores.macro_precision == pytest.approx(precision_score(y_true, y_pred, average="macro"))
    assert scores.accuracy == pytest.approx(5 / 8)
    assert scores.labels == ("a", "b", "c")
    assert scores.per_class_f1 == pytest.approx(dict(zip("abc", f1_score(y_true, y_pred, average=None))))
    assert scores.confusion.index.name == "true" and scores.confusion.columns.name == "predicted"
    assert list(scores.confusion.index) == ["a", "b", "c"] and list(scores.confusion.columns) == ["a", "b", "c"]
    np.testing.assert_array_equal(scores.confusion.to_numpy(), confusion_matrix(y_true, y_pred))
    assert scores.confusion.loc["c", "b"] == 1  # rows true, columns predicted
    assert json.loads(json.dumps(scores.to_dict()))["confusion"]["predicted"] == ["a", "b", "c"]


def test_classification_counts_predicted_labels_absent_from_the_truth():
    y_true = np.array([0, 0, 1, 1, 2, 2])  # compared as strings
    y_pred = ["0", "x", "1", "1", "2", "x"]
    scores = classification_scores(y_true, y_pred)
    assert scores.n_predicted_outside_labels == 2 and scores.predicted_outside_labels == ("x",)
    assert scores.labels == ("0", "1", "2")
    truth = [str(v) for v in y_true]
    assert scores.macro_f1 == pytest.approx(f1_score(truth, y_pred, labels=["0", "1", "2"], average="macro"))
    assert list(scores.confusion.columns) == ["0", "1", "2", "x"] and list(scores.confusion.index) == ["0", "1", "2"]
    assert scores.confusion["x"].sum() == 2
    with pytest.raises(ValueError, match="labels"):
        classification_scores(["a"], ["a", "b"])


@pytest.mark.parametrize("sparse", [True, False])
def test_hide_counts_hides_a_tenth_of_each_cells_non_zeros(sparse):
    counts = synthetic_adata(100, 80, sparse=sparse).X
    before = counts.copy()
    corrupted, mask = hide_counts(counts, fraction=0.1, seed=0)
    assert sp.issparse(corrupted) == sparse and sp.issparse(mask) == sparse
    x, c, m = (v.toarray() if sp.issparse(v) else np.asarray(v) for v in (counts, corrupted, mask))
    assert m.dtype == bool and m.shape == x.shape
    assert (x[m] > 0).all() and (c[m] == 0).all()  # only non-zeros are hidden, and they read 0
    np.testing.assert_array_equal(c[~m], x[~m])  # everything else is untouched
    n_nonzero, n_hidden = (x > 0).sum(axis=1), m.sum(axis=1)
    expected = np.clip(np.floor(0.1 * n_nonzero + 0.5), 1, n_nonzero - 1)
    np.testing.assert_array_equal(n_hidden[n_nonzero >= 2], expected[n_nonzero >= 2])
    assert (c > 0).sum(axis=1).min() >= 1  # every cell keeps a count
    # the input is not modified
    np.testing.assert_array_equal(x, before.toarray() if sparse else before)


def test_hide_counts_is_seeded_and_the_same_for_dense_and_sparse():
    counts = synthetic_adata(60, 40).X
    _, mask = hide_counts(counts, seed=1)
    _, again = hide_counts(counts.toarray(), seed=1)
    _, other = hide_counts(counts, seed=2)
    np.testing.assert_array_equal(mask.toarray(), again)
    assert (mask != other).nnz > 0
    with pytest.raises(ValueError, match="fraction"):
        hide_counts(counts, fraction=1.5)


def test_denoising_scores_are_zero_when_perfect_and_only_read_hidden_entries():
    truth = synthetic_adata(80, 50).X
    corrupted, mask = hide_counts(truth, seed=0)
    perfect = denoising_scores(truth, truth, mask)
    assert perfect.rmse == 0 and perfect.mae == 0 and perfect.n_hidden == mask.nnz
    worse = denoising_scores(truth, corrupted, mask)
    assert worse.rmse > 0 and worse.mae > 0 and worse.rmse >= worse.mae
    # dense or sparse inputs, and a dense mask, give the same figures
    same = denoising_scores(truth.toarray(), corrupted.toarray(), mask.toarray())
    assert same.to_dict() == pytest.approx(worse.to_dict(), nan_ok=True)
    # moving counts between two visible genes of a cell (its total kept) does not change the score
    prediction = corrupted.toarray()
    hidden = mask.toarray()
    row = 0
    visible = np.flatnonzero(~hidden[row] & (prediction[row] > 0))[:2]
    prediction[row, visible[0]] += prediction[row, visible[1]]
    prediction[row, visible[1]] = 0
    assert denoising_scores(truth, prediction, mask).to_dict() == pytest.approx(worse.to_dict(), nan_ok=True)
    # changing a hidden entry does
    prediction[row, np.flatnonzero(hidden[row])[0]] += 5
    assert denoising_scores(truth, prediction, mask).rmse != pytest.approx(worse.rmse)


def test_denoising_scores_follow_the_paper_formula():
    truth = np.array([[10.0, 0.0, 30.0], [5.0, 5.0, 0.0]])
    prediction = np.array([[20.0, 10.0, 10.0], [1.0, 2.0, 1.0]])
    mask = np.array([[True, False, False], [False, True, False]])
    t = np.log1p(np.array([10 / 40, 5 / 10]) * 1e4)
    p = np.log1p(np.array([20 / 40, 2 / 4]) * 1e4)
    scores = denoising_scores(truth, prediction, mask)
    assert scores.rmse == pytest.approx(np.sqrt(np.mean((p - t) ** 2)))
    assert scores.mae == pytest.approx(np.mean(np.abs(p - t)))
    with pytest.raises(ValueError, match="negative"):
        denoising_scores(truth, -prediction, mask)
    with pytest.raises(ValueError, match="no entry"):
        denoising_scores(truth, prediction, np.zeros_like(mask))


@pytest.mark.parametrize("sparse", [True, False])
def test_molecular_split_parts_sum_to_the_input(sparse):
    counts = synthetic_adata(100, 60, sparse=sparse).X
    before = counts.copy()
    train, held = molecular_split(counts, fraction=0.9, seed=0)
    dense = [v.toarray() if sp.issparse(v) else v for v in (counts, train, held)]
    np.testing.assert_array_equal(dense[1] + dense[2], dense[0])
    assert all((d >= 0).all() and np.array_equal(d, np.rint(d)) for d in dense[1:])
    assert dense[1].sum() / dense[0].sum() == pytest.approx(0.9, abs=0.01)
    assert sp.issparse(train) == sparse
    np.testing.assert_array_equal(dense[0], before.toarray() if sparse else before)
    again, _ = molecular_split(counts, fraction=0.9, seed=0)
    np.testing.assert_array_equal(dense[1], again.toarray() if sparse else again)
    with pytest.raises(ValueError, match="integers"):
        molecular_split(dense[0] + 0.5)


def test_mcv_scores_rescale_to_the_held_out_depth():
    held = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    p = 0.75
    exact = held * p / (1 - p)  # a "denoised" training part that matches the held-out part exactly
    scores = mcv_scores(sp.csr_matrix(exact), held, train_fraction=p)
    assert scores.mse == pytest.approx(0) and scores.mse_normalized == pytest.approx(0)
    mu = held + 0.5
    expected_poisson = np.mean(mu - held * np.log(mu + 1e-6))
    shifted = mcv_scores(mu * p / (1 - p), held, train_fraction=p)
    assert shifted.poisson == pytest.approx(expected_poisson)
    assert shifted.mse == pytest.approx(np.mean((np.log1p(mu) - np.log1p(held)) ** 2))
    with pytest.raises(ValueError, match="shape"):
        mcv_scores(mu[:1], held, train_fraction=p)


def test_neighbourhood_agreement_is_one_for_the_same_structure_and_low_for_noise():
    from opencellplm.metrics import neighbourhood_agreement

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(300, 10))
    rotated = reference @ np.linalg.qr(rng.normal(size=(10, 10)))[0] * 3.0  # same distances up to scale
    assert neighbourhood_agreement(rotated, reference, k=10) == pytest.approx(1.0)
    noise = rng.normal(size=(300, 10))
    assert neighbourhood_agreement(noise, reference, k=10) < 0.1
    noisy = reference + rng.normal(scale=0.5, size=reference.shape)
    assert 0.1 < neighbourhood_agreement(noisy, reference, k=10) < 1.0
    with_nan = rotated.copy()
    with_nan[:5] = np.nan  # cells a model left out are left out of the comparison
    assert neighbourhood_agreement(with_nan, reference, k=10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one row per cell each"):
        neighbourhood_agreement(rotated[:10], reference)
    with pytest.raises(ValueError, match="more than k=15 cells without NaN, got 10"):
        neighbourhood_agreement(rotated[:10], reference[:10])


def test_knn_label_agreement_is_one_for_pure_neighbourhoods_and_balanced_over_classes():
    from opencellplm.metrics import knn_label_agreement

    rng = np.random.default_rng(0)
    centres = np.repeat(np.eye(3) * 50, [200, 20, 20], axis=0)  # one large class, two small ones
    labels = np.repeat(["big", "small1", "small2"], [200, 20, 20])
    separated = centres + rng.normal(size=centres.shape)
    assert knn_label_agreement(separated, labels, k=10) == pytest.approx(1.0)
    mixed = rng.normal(size=centres.shape)  # no structure: the small classes' neighbours are mostly "big"
    score = knn_label_agreement(mixed, labels, k=10)
    assert score < 0.45  # balanced: (~0.83 + ~0.08 + ~0.08) / 3, where the plain cell mean would be ~0.7
    with_missing = labels.astype(object)
    with_missing[:5] = None
    with_nan = separated.copy()
    with_nan[5] = np.nan
    assert knn_label_agreement(with_nan, with_missing, k=10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one row per cell each"):
        knn_label_agreement(separated[:10], labels)
    with pytest.raises(ValueError, match="needs more than k=15 labelled cells without NaN, got 10"):
        knn_label_agreement(separated[:10], labels[:10])
