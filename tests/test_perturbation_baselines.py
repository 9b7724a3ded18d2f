"""Perturbation baselines: no change, training mean, additive, linear (Ahlmann-Eltze et al.)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opencellplm.baselines import (
    BaselineResult,
    perturbation_additive,
    perturbation_linear,
    perturbation_no_change,
    perturbation_training_mean,
)
from opencellplm.data import gears_split, parse_labels
from opencellplm.datasets import simulate_perturbseq
from opencellplm.metrics import perturbation_scores

GENES = [f"g{i}" for i in range(6)]


def additive_toy():
    """Means where every combination is exactly control + the sum of its single-gene effects."""
    rng = np.random.default_rng(0)
    control = rng.uniform(0, 3, size=6)
    effect = {name: rng.normal(0, 1, size=6) for name in ("A", "B", "C", "D:up")}
    rows = {"ctrl": control} | {name: control + e for name, e in effect.items()}
    train = pd.DataFrame(rows, index=GENES).T
    truth = {
        "A+B": control + effect["A"] + effect["B"],
        "B+C": control + effect["B"] + effect["C"],
        "A+D:up": control + effect["A"] + effect["D:up"],
    }
    return train, pd.DataFrame(truth, index=GENES).T


def test_no_change_and_training_mean():
    train, truth = additive_toy()
    result = perturbation_no_change(train, list(truth.index))
    assert isinstance(result, BaselineResult) and result.name == "no_change" and result.seconds >= 0
    assert list(result.prediction.index) == list(truth.index) and list(result.prediction.columns) == GENES
    np.testing.assert_array_equal(result.prediction.to_numpy(), np.tile(train.loc["ctrl"], (3, 1)))
    mean = perturbation_training_mean(train, ["A+B"])
    np.testing.assert_allclose(mean.prediction.loc["A+B"], train.drop(index="ctrl").mean())
    assert mean.params["n_train"] == 4


def test_additive_is_exact_on_an_additive_toy():
    train, truth = additive_toy()
    parsed = parse_labels([*train.index, *truth.index, "A+E", "D", "E"])
    result = perturbation_additive(train, parsed, [*truth.index, "A+E", "D", "E"])
    pd.testing.assert_frame_equal(result.prediction.loc[truth.index], truth, check_names=False)
    # E never seen alone contributes 0; D (down) is not D:up
    np.testing.assert_allclose(result.prediction.loc["A+E"], train.loc["A"])
    np.testing.assert_allclose(result.prediction.loc["D"], train.loc["ctrl"])
    np.testing.assert_allclose(result.prediction.loc["E"], train.loc["ctrl"])
    assert result.params["n_genes_not_seen_alone"] == 2 and result.params["labels_with_unseen_genes"] == 3


def planted_linear(n_genes=80, n_latent=3, seed=0):
    """Means whose perturbation effects are linear in a gene embedding: effect(j) = E A E[j]."""
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(n_genes)]
    embedding = rng.normal(size=(n_genes, n_latent))
    mixing = rng.normal(size=(n_latent, n_latent))
    control = rng.uniform(1, 3, size=n_genes)
    rows = {"ctrl": control} | {genes[j]: control + embedding @ mixing @ embedding[j] for j in range(n_genes)}
    return pd.DataFrame(rows, index=genes).T


def test_linear_recovers_a_planted_linear_structure():
    means = planted_linear()
    test = [f"g{i}" for i in range(0, 80, 8)]
    train = means.drop(index=test)
    parsed = parse_labels(means.index)
    linear = perturbation_linear(train, parsed, test)
    mean = perturbation_training_mean(train, test)
    truth = means.loc[test]
    error_linear = np.sqrt(((linear.prediction - truth) ** 2).to_numpy().mean())
    error_mean = np.sqrt(((mean.prediction - truth) ** 2).to_numpy().mean())
    assert error_linear < 0.2 * error_mean  # (0.28 vs 2.68: the model has an intercept, the plant none)
    assert linear.name == "linear" and linear.params["n_components"] == 10 and linear.params["ridge"] == 0.1
    scores = perturbation_scores(linear.prediction, truth, means.loc["ctrl"], {t: np.arange(20) for t in test})
    assert scores.per_perturbation["pearson_delta"].min() > 0.95


def test_on_simulated_data_linear_beats_the_training_mean_and_additive_beats_no_change():
    adata, truth = simulate_perturbseq(
        n_genes=150, n_regulators=30, n_single=24, n_combo=12, cells_per_perturbation=10, n_control=30,
        return_truth=True,
    )  # fmt: skip
    means = np.log1p(truth * 1e4)  # noise-free log profiles
    parsed = parse_labels(means.index)
    split = gears_split(parsed, seed=0)
    train = means.loc[["ctrl", *split.train]]
    top = {label: np.argsort(-np.abs(means.loc[label] - means.loc["ctrl"]).to_numpy())[:20] for label in split.test}
    predictions = {
        "linear": perturbation_linear(train, parsed, split.test),
        "training_mean": perturbation_training_mean(train, split.test),
        "additive": perturbation_additive(train, parsed, split.test),
        "no_change": perturbation_no_change(train, split.test),
    }
    summary = {
        name: perturbation_scores(
            r.prediction, means.loc[split.test], means.loc["ctrl"], top, groups=split.groups
        ).summary()[("rmse_top20", "mean")]
        for name, r in predictions.items()
    }
    assert summary["linear"]["all"] < summary["training_mean"]["all"]
    assert summary["additive"]["combo_seen2"] < 0.5 * summary["no_change"]["combo_seen2"]


def test_linear_fewer_components_and_unmeasured_genes():
    means = planted_linear(n_genes=12)
    train = means.loc[["ctrl", "g1", "g2", "g3"]]
    parsed = parse_labels([*means.index, "X+g4"])
    result = perturbation_linear(train, parsed, ["g4", "X+g4"])
    assert result.params["n_components"] == 4  # 4 training conditions
    assert result.params["n_perturbed_genes_not_measured"] == 1
    np.testing.assert_allclose(result.prediction.loc["X+g4"], result.prediction.loc["g4"])


def test_errors():
    train, truth = additive_toy()
    parsed = parse_labels([*train.index, *truth.index])
    with pytest.raises(ValueError, match=r"the control label 'NT' is not in train_means"):
        perturbation_no_change(train, ["A+B"], control="NT")
    with pytest.raises(ValueError, match="test_labels is empty"):
        perturbation_training_mean(train, [])
    with pytest.raises(ValueError, match="test_labels has repeated labels"):
        perturbation_no_change(train, ["A+B", "A+B"])
    with pytest.raises(ValueError, match=r"parsed lacks 1 of the test label\(s\): \['Z'\]"):
        perturbation_additive(train, parsed, ["Z"])
    with pytest.raises(ValueError, match=r"parsed lacks 1 of the training label\(s\): \['A'\]"):
        perturbation_linear(train, {k: v for k, v in parsed.items() if k != "A"}, ["A+B"])
    with pytest.raises(ValueError, match="train_means holds only the control"):
        perturbation_training_mean(train.loc[["ctrl"]], ["A"])
    with pytest.raises(ValueError, match="train_means must be a DataFrame"):
        perturbation_no_change(train.to_numpy(), ["A"])
    with pytest.raises(ValueError, match="train_means must hold finite numbers"):
        perturbation_no_change(train.replace(train.iloc[0, 0], np.nan), ["A"])
    with pytest.raises(ValueError, match="n_components must be a positive integer"):
        perturbation_linear(train, parsed, ["A+B"], n_components=0)
    with pytest.raises(ValueError, match="ridge must be a non-negative number"):
        perturbation_linear(train, parsed, ["A+B"], ridge=-1.0)
