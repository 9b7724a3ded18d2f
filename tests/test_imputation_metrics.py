"""Spatial imputation scores and held-out gene folds: hand-checked values, the protocol's bins, every error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from opencellplm.metrics import (
    ZERO_RATE_BINS,
    ImputationScores,
    bin_labels,
    held_out_gene_folds,
    imputation_scores,
    zero_rate_bin,
    zero_rates,
)

# ---------------------------------------------------------------------------------------------------------------
# zero rates and bins


def test_zero_rates_dense_and_sparse_agree_and_count_stored_zeros():
    counts = np.array([[0, 1, 0], [2, 0, 0], [3, 4, 0], [0, 5, 0]], dtype=np.float32)
    expected = np.array([0.5, 0.25, 1.0])
    np.testing.assert_allclose(zero_rates(counts), expected)
    stored_zero = sp.csr_matrix(counts)
    stored_zero.data[0] = 0.0  # an explicitly stored zero is still a zero
    np.testing.assert_allclose(zero_rates(stored_zero), [0.5, 0.5, 1.0])
    np.testing.assert_allclose(zero_rates(sp.csc_matrix(counts)), expected)


def test_zero_rates_errors():
    with pytest.raises(ValueError, match="2-D"):
        zero_rates(np.zeros(3))
    with pytest.raises(ValueError, match="no cell"):
        zero_rates(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="NaN"):
        zero_rates(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="NaN"):
        zero_rates(sp.csr_matrix(np.array([[np.nan, 1.0]])))


def test_bins_follow_the_official_edges():
    assert ZERO_RATE_BINS == (0.75, 0.9, 0.95)
    rates = [0.0, 0.75, 0.7500001, 0.9, 0.92, 0.95, 0.96, 1.0]
    np.testing.assert_array_equal(zero_rate_bin(rates), [0, 0, 1, 1, 2, 2, 3, 3])
    assert bin_labels() == ["[0, 0.75]", "(0.75, 0.9]", "(0.9, 0.95]", "(0.95, 1]"]
    with pytest.raises(ValueError, match=r"increase strictly inside \(0, 1\)"):
        zero_rate_bin([0.5], bins=(0.9, 0.75))
    with pytest.raises(ValueError, match=r"increase strictly inside \(0, 1\)"):
        zero_rate_bin([0.5], bins=(0.5, 1.0))
    with pytest.raises(ValueError, match="non-empty"):
        zero_rate_bin([0.5], bins=())


# ---------------------------------------------------------------------------------------------------------------
# folds


def rates_per_bin(sizes=(40, 20, 10, 5), seed=0) -> np.ndarray:
    """Zero rates with ``sizes`` genes in the four bins, shuffled."""
    rng = np.random.default_rng(seed)
    lows, highs = (0.0, 0.76, 0.91, 0.96), (0.75, 0.9, 0.95, 1.0)
    rates = np.concatenate([rng.uniform(lo, hi, n) for lo, hi, n in zip(lows, highs, sizes)])
    return rng.permutation(rates)


def test_folds_partition_the_genes_stratified_when_uncapped():
    rates = rates_per_bin()
    folds = held_out_gene_folds(rates, n_folds=5, max_per_bin=None)
    assert len(folds) == 5
    every = np.concatenate(folds)
    assert len(every) == len(set(every)) == len(rates)  # disjoint and complete
    which = zero_rate_bin(rates)
    for fold in folds:
        assert fold.dtype == np.int64 and np.all(np.diff(fold) > 0)  # sorted
        np.testing.assert_array_equal(np.bincount(which[fold], minlength=4), [8, 4, 2, 1])  # 1/5 of each bin


def test_folds_respect_max_per_bin_and_balance_sizes():
    rates = rates_per_bin((40, 20, 7, 2))
    which = zero_rate_bin(rates)
    folds = held_out_gene_folds(rates, n_folds=5, max_per_bin=3)
    every = np.concatenate(folds)
    assert len(every) == len(set(every))
    per_bin = np.array([np.bincount(which[f], minlength=4) for f in folds])
    assert per_bin.max() <= 3
    np.testing.assert_array_equal(per_bin.sum(axis=0), [15, 15, 7, 2])  # capped bins give 3 x 5, small ones all
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1  # the dealing turn carries over between bins


def test_folds_accept_integral_floats():
    folds = held_out_gene_folds(rates_per_bin(), n_folds=5.0, max_per_bin=2.0)
    assert len(folds) == 5 and all(len(f) == 7 for f in folds)  # 2 + 2 + 2 + 1 of the 4 bins


def test_folds_are_seeded():
    rates = rates_per_bin()
    a = held_out_gene_folds(rates, seed=3)
    b = held_out_gene_folds(rates, seed=3)
    c = held_out_gene_folds(rates, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_folds_with_as_many_genes_as_folds_are_single_genes():
    folds = held_out_gene_folds([0.1, 0.8, 0.99], n_folds=3)
    assert sorted(int(f[0]) for f in folds) == [0, 1, 2] and all(len(f) == 1 for f in folds)


def test_fold_errors():
    with pytest.raises(ValueError, match="n_folds must be an integer >= 2"):
        held_out_gene_folds([0.1, 0.2], n_folds=1)
    with pytest.raises(ValueError, match="at least 4 genes, but zero_rate has 3"):
        held_out_gene_folds([0.1, 0.2, 0.3], n_folds=4)
    with pytest.raises(ValueError, match="max_per_bin must be a positive integer or None"):
        held_out_gene_folds([0.1, 0.2], n_folds=2, max_per_bin=0)
    with pytest.raises(ValueError, match=r"shares in \[0, 1\]"):
        held_out_gene_folds([0.1, 1.2], n_folds=2)
    with pytest.raises(ValueError, match="1-D"):
        held_out_gene_folds(np.zeros((2, 2)), n_folds=2)


# ---------------------------------------------------------------------------------------------------------------
# scores


def test_perfect_prediction_scores_one_one_zero():
    truth = sp.csr_matrix(np.array([[0, 3, 1], [2, 0, 4], [5, 1, 0], [1, 2, 2]], dtype=np.float32))
    scores = imputation_scores(truth, truth.toarray().astype(np.float64), genes=["a", "b", "c"])
    assert scores.pearson == pytest.approx(1.0) and scores.cosine == pytest.approx(1.0)
    assert scores.rmse == pytest.approx(0.0)
    assert (scores.n_genes, scores.n_cells, scores.n_undefined_pearson) == (3, 4, 0)
    assert list(scores.per_gene.index) == ["a", "b", "c"]


def test_scores_by_hand():
    """log1p values chosen by hand: truth ``t`` and prediction ``p`` below are the log1p of what is passed."""
    t = np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [2.0, 2.0, 0.0]])
    p = np.array([[1.0, 0.0, 0.0], [1.0, 2.0, 1.0], [1.0, 4.0, 0.0]])
    scores = imputation_scores(np.expm1(t), np.expm1(p), genes=["const", "scaled", "swapped"])
    table = scores.per_gene
    # gene "const": a constant prediction has no Pearson r; cosine (0+1+2)/(sqrt(5) sqrt(3)); rmse sqrt(2/3)
    assert np.isnan(table.loc["const", "pearson"])
    assert table.loc["const", "cosine"] == pytest.approx(3 / np.sqrt(15))
    assert table.loc["const", "rmse"] == pytest.approx(np.sqrt(2 / 3))
    # gene "scaled": p = 2 t, so r = 1 and cosine 1; rmse sqrt((0 + 1 + 4) / 3)
    assert table.loc["scaled", "pearson"] == pytest.approx(1.0)
    assert table.loc["scaled", "cosine"] == pytest.approx(1.0)
    assert table.loc["scaled", "rmse"] == pytest.approx(np.sqrt(5 / 3))
    # gene "swapped": centred (2,-1,-1)/3 and (-1,2,-1)/3: r = (-3/9) / (6/9) = -0.5; orthogonal: cosine 0
    assert table.loc["swapped", "pearson"] == pytest.approx(-0.5)
    assert table.loc["swapped", "cosine"] == pytest.approx(0.0)
    assert table.loc["swapped", "rmse"] == pytest.approx(np.sqrt(2 / 3))
    # means: the NaN Pearson is left out and counted
    assert scores.pearson == pytest.approx((1.0 - 0.5) / 2)
    assert scores.n_undefined_pearson == 1 and scores.n_undefined_cosine == 0
    assert scores.cosine == pytest.approx((3 / np.sqrt(15) + 1.0 + 0.0) / 3)
    assert scores.rmse == pytest.approx((2 * np.sqrt(2 / 3) + np.sqrt(5 / 3)) / 3)
    np.testing.assert_allclose(table["zero_rate"], [1 / 3, 1 / 3, 2 / 3])
    assert list(table["bin"]) == ["[0, 0.75]", "[0, 0.75]", "[0, 0.75]"]
    assert scores.to_dict() == {
        "pearson": scores.pearson,
        "cosine": scores.cosine,
        "rmse": scores.rmse,
        "n_genes": 3,
        "n_cells": 3,
        "n_undefined_pearson": 1,
        "n_undefined_cosine": 0,
    }


def test_a_gene_never_expressed_has_no_pearson_nor_cosine():
    truth = np.array([[0.0, 1.0], [0.0, 3.0], [0.0, 0.0], [0.0, 2.0]])
    predicted = truth.copy()
    predicted[:, 0] = 0.5
    scores = imputation_scores(truth, predicted)
    assert scores.n_undefined_pearson == 1 and scores.n_undefined_cosine == 1
    assert scores.per_gene["bin"].iloc[0] == "(0.95, 1]" and scores.per_gene.index.name == "gene"
    assert scores.pearson == pytest.approx(1.0) and scores.cosine == pytest.approx(1.0)  # the other gene only
    assert isinstance(scores, ImputationScores)
    assert scores.by_bin().loc["(0.95, 1]", "n_genes"] == 1


def test_dataframe_truth_names_the_genes():
    truth = pd.DataFrame([[1.0, 0.0], [0.0, 2.0]], columns=["x", "y"])
    assert list(imputation_scores(truth, truth.to_numpy()).per_gene.index) == ["x", "y"]


def test_score_errors():
    truth = np.ones((3, 2))
    with pytest.raises(ValueError, match=r"truth has shape \(3, 2\) but predicted has shape \(3, 3\)"):
        imputation_scores(truth, np.ones((3, 3)))
    with pytest.raises(ValueError, match="predicted holds negative values"):
        imputation_scores(truth, -np.ones((3, 2)))
    with pytest.raises(ValueError, match="predicted holds NaN or infinite"):
        imputation_scores(truth, np.full((3, 2), np.inf))
    with pytest.raises(ValueError, match="truth holds NaN or infinite"):
        imputation_scores(np.full((3, 2), np.nan), truth)
    with pytest.raises(ValueError, match="truth holds negative"):
        imputation_scores(-truth, truth)
    with pytest.raises(ValueError, match="nothing to score"):
        imputation_scores(np.ones((0, 2)), np.ones((0, 2)))
    with pytest.raises(ValueError, match="genes has 3 names but truth has 2 columns"):
        imputation_scores(truth, truth, genes=["a", "b", "c"])
    with pytest.raises(ValueError, match="repeated names"):
        imputation_scores(truth, truth, genes=["a", "a"])
    with pytest.raises(ValueError, match="2-D"):
        imputation_scores(np.ones(3), np.ones(3))
