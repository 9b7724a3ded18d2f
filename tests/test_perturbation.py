"""Perturbation prediction: "no change" before training, fitting, unseen genes, save/load, the score with every
baseline and group, and the input errors."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from opencellplm import CellPLM, testing
from opencellplm.data.perturbations import PerturbationLabelError, parse_labels
from opencellplm.datasets.perturbseq_simulator import simulate_perturbseq
from opencellplm.tasks import PerturbationPredictor, PerturbationRecipe, PerturbationResult
from opencellplm.tasks.perturbation import lognorm_mean

VOCABULARY = [f"GENE{i}" for i in range(80)]
#: fp32 (the same numbers on every CPU) and a high rate, so that a few steps move the weights.
QUICK = PerturbationRecipe(steps=30, eval_every=5, lr=3e-2, precision="fp32", max_cells=32, patience=0)
SHORT = replace(QUICK, steps=4, eval_every=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model() -> CellPLM:
    return testing.tiny_model(VOCABULARY, dropout=0.1, n_heads=4, n_batches=3, n_datasets=2)


@pytest.fixture(scope="module")
def model() -> CellPLM:
    return tiny_model()


def simulated(**changes):
    options = dict(n_regulators=12, n_single=10, n_combo=6, cells_per_perturbation=20, n_control=64, seed=0)
    return simulate_perturbseq(60, gene_names=VOCABULARY[:60], **(options | changes))


@pytest.fixture(scope="module")
def adata():
    return simulated()


@pytest.fixture(scope="module")
def fitted(model, adata) -> PerturbationPredictor:
    return PerturbationPredictor.from_pretrained(model, recipe=QUICK).fit(adata)


def control_mean(adata) -> np.ndarray:
    return lognorm_mean(adata[adata.obs["perturbation"] == "ctrl"].X)


# ------------------------------------------------------------------------------------------- behaviour
def test_untrained_predicts_no_change_exactly(model, adata):
    frozen = replace(SHORT, lr=0.0)  # the weights never move: the fitted predictor is the untrained one
    predictor = PerturbationPredictor.from_pretrained(model, recipe=frozen).fit(adata)
    labels = ["GENE3", "GENE3+GENE7", "GENE5:up", "GENE70", "ctrl"]
    prediction = predictor.predict(labels)
    assert list(prediction.index) == labels and list(prediction.columns) == list(adata.var_names)
    expected = np.broadcast_to(control_mean(adata), prediction.shape)
    np.testing.assert_allclose(prediction.to_numpy(), expected, rtol=0, atol=1e-6)


def test_fit_lowers_the_validation_error(fitted):
    summary = fitted.summary
    assert summary.kept == "fine-tuned" and summary.validation == "held-out training perturbations"
    assert summary.best_val_mse < 0.85 * summary.start_val_mse  # "no change" is the start
    assert not set(summary.validation_labels) & set(summary.train_labels)


def test_predicts_an_unseen_single_gene_through_its_pretrained_row(fitted, adata):
    trained_genes = {p.gene for label in fitted.summary.train_labels for p in parse_labels([label])[label]}
    unseen = next(g for g in VOCABULARY if g not in trained_genes and g in set(adata.var_names))
    prediction = fitted.predict([unseen, f"{unseen}:up"])
    assert np.isfinite(prediction.to_numpy()).all()
    change = prediction.to_numpy() - control_mean(adata)
    assert np.abs(change).max() > 1e-4  # the row moves the prediction away from "no change"
    assert not np.allclose(change[0], change[1])  # and down and up differ


def test_save_load_round_trip(fitted, tmp_path):
    fitted.save(tmp_path / "predictor")
    loaded = PerturbationPredictor.load(tmp_path / "predictor")
    labels = ["GENE3+GENE7", "GENE11", "GENE2:up"]
    np.testing.assert_array_equal(loaded.predict(labels).to_numpy(), fitted.predict(labels).to_numpy())
    assert loaded.summary.best_val_mse == fitted.summary.best_val_mse
    with pytest.raises(FileExistsError, match="overwrite"):
        fitted.save(tmp_path / "predictor")
    fitted.save(tmp_path / "predictor", overwrite=True)


def test_score_runs_every_baseline_and_group(model):
    adata = simulated(n_single=8, n_combo=8, cells_per_perturbation=10)
    predictor = PerturbationPredictor.from_pretrained(model, recipe=SHORT)
    result = predictor.score(adata, seeds=(0, 1))
    assert isinstance(result, PerturbationResult) and result.simulated and result.seeds == [0, 1]
    table = result.to_frame()
    methods = {"cellplm", "no_change", "training_mean", "additive", "linear"}
    assert set(table.index.get_level_values("method")) == methods
    assert {"single_unseen", "all"} <= set(table.index.get_level_values("group"))
    assert (table["data"] == "simulated").all()
    for column in ("rmse", "rmse_std", "pearson_delta_top20", "direction_accuracy_top20", "fit_seconds"):
        assert column in table
    for seed, split in result.splits.items():
        assert not set(split["train"]) & set(split["test"])
        assert set(result.fits[seed]["cellplm"]["train_labels"]) <= set(split["train"])  # never a test label
    assert {(r.seed, r.method) for r in result.runs} == {(s, m) for s in (0, 1) for m in methods}
    assert all(r.fit_seconds >= 0 and r.peak_rss_increase_mb >= 0 for r in result.runs)
    assert result.checkpoint["name"] == "in memory" and result.version
    no_change = result.scores[result.scores["method"] == "no_change"]
    np.testing.assert_allclose(no_change["pearson_delta"].fillna(0), 0, atol=1e-12)  # control mean: no change


# --------------------------------------------------------------------------------------------- errors
def test_gene_outside_the_vocabulary_is_named(model, adata):
    data = adata.copy()
    labels = data.obs["perturbation"].astype(str).to_numpy()
    single = next(label for label in labels if label.startswith("GENE") and "+" not in label)
    labels[labels == single] = "NOTAGENE"
    data.obs["perturbation"] = labels
    predictor = PerturbationPredictor.from_pretrained(model, recipe=SHORT)
    with pytest.raises(ValueError, match=r"not in the model's vocabulary.*NOTAGENE.*extend_vocabulary"):
        predictor.fit(data)
    predictor.fit(data, extend_vocabulary=True)  # on request: a fresh row
    assert predictor.base.genes[-1] == "NOTAGENE" and "NOTAGENE" not in model.genes  # the given model is unchanged
    assert np.isfinite(predictor.predict(["NOTAGENE"]).to_numpy()).all()
    with pytest.raises(ValueError, match="OTHERGENE"):
        predictor.predict(["OTHERGENE+GENE3"])


@pytest.mark.parametrize("kind", ["category", "object"])
def test_cells_without_a_label_are_left_out_and_counted_never_a_gene(model, adata, kind, caplog):
    data = adata.copy()
    labels = data.obs["perturbation"].astype(str).to_numpy().astype(object)
    n_control = int((labels == "ctrl").sum())
    rows = np.r_[np.flatnonzero(labels == "ctrl")[:12], np.flatnonzero(labels != "ctrl")[:13]]
    labels[rows] = np.nan if kind == "category" else [None, "", "nan", np.nan, " "] * 5
    data.obs["perturbation"] = pd.Series(labels, index=data.obs_names, dtype=kind)
    predictor = PerturbationPredictor.from_pretrained(model, recipe=replace(SHORT, steps=2))
    with caplog.at_level(logging.WARNING, logger="opencellplm"):
        predictor.fit(data, extend_vocabulary=True)
    assert "nan" not in predictor.base.genes and predictor.base.genes == model.genes  # no fake gene
    summary = predictor.summary
    assert summary.n_unlabelled_cells == 25 and summary.n_control_cells == n_control - 12
    assert "" not in summary.train_labels + summary.validation_labels
    assert f"25 of {data.n_obs} cells have no perturbation label in obs['perturbation']" in caplog.text
    result = PerturbationPredictor.from_pretrained(model, recipe=replace(SHORT, steps=2)).score(
        data, seeds=(0,), baselines=("no_change",)
    )
    assert result.n_unlabelled_cells == 25 and result.n_cells == data.n_obs
    assert "nan" not in set(result.scores["perturbation"])
    with pytest.raises(PerturbationLabelError, match=r"2 of the 3 labels to predict are missing .*\[nan, None\]"):
        predictor.predict(["GENE3", np.nan, None])
    with pytest.raises(PerturbationLabelError, match=r"1 of the 1 labels to predict are missing .*\['nan'\]"):
        predictor.predict(["nan"])


def test_no_control_cells(model, adata):
    data = adata[adata.obs["perturbation"] != "ctrl"].copy()
    with pytest.raises(ValueError, match=r"no control cells.*'ctrl'.*labels found: \['GENE"):
        PerturbationPredictor.from_pretrained(model, recipe=SHORT).fit(data)


def test_unparsable_labels_say_the_expected_format(model, adata, fitted):
    data = adata.copy()
    labels = data.obs["perturbation"].astype(str).to_numpy()
    labels[:3] = "GENE3:sideways"
    data.obs["perturbation"] = labels
    with pytest.raises(PerturbationLabelError, match=r"GENE3:sideways.*expected"):
        PerturbationPredictor.from_pretrained(model, recipe=SHORT).fit(data)
    with pytest.raises(PerturbationLabelError, match="expected"):
        fitted.predict(["GENE3++GENE4"])


def test_missing_label_column_and_unfitted_predictor(model, adata):
    predictor = PerturbationPredictor.from_pretrained(model, recipe=SHORT)
    with pytest.raises(KeyError, match="condition"):
        predictor.fit(adata, perturbation_key="condition")
    with pytest.raises(ValueError, match="not fitted"):
        predictor.predict(["GENE3"])


def test_labels_naming_the_same_perturbation_never_split_across_train_and_test(model):
    adata = simulated(n_single=8, n_combo=8, cells_per_perturbation=10)
    labels = adata.obs["perturbation"].astype(str).to_numpy().copy()
    single = next(label for label in labels if label != "ctrl" and "+" not in label)
    rows = np.flatnonzero(labels == single)
    labels[rows[::2]] = f"{single}+ctrl"  # the GEARS spelling of the same single
    adata.obs["perturbation"] = labels
    result = PerturbationPredictor.from_pretrained(model, recipe=SHORT).score(adata, seeds=(0,), baselines=())
    split = result.splits[0]
    assert f"{single}+ctrl" not in split["train"] + split["test"]
    assert single in split["train"] + split["test"]


def test_a_loaded_predictor_is_not_scored(fitted, adata, tmp_path):
    fitted.save(tmp_path / "predictor")
    with pytest.raises(ValueError, match="loaded with a fine-tuned backbone"):
        PerturbationPredictor.load(tmp_path / "predictor").score(adata, seeds=(0,))


def test_an_edited_predictor_is_one_error_naming_its_settings_file(fitted, tmp_path):
    fitted.save(tmp_path / "predictor")
    path = tmp_path / "predictor" / "perturbation.json"
    settings = json.loads(path.read_text())
    settings.pop("sha256")  # as an earlier version saved it: the settings themselves are still checked
    settings["recipe"]["bogus"] = 1
    path.write_text(json.dumps(settings))
    with pytest.warns(UserWarning, match="records no checksums"), pytest.raises(ValueError) as err:
        PerturbationPredictor.load(tmp_path / "predictor")
    assert str(err.value).startswith(f"{path}: 'recipe' has unknown settings ['bogus']")
    del settings["recipe"]["bogus"], settings["control"]
    path.write_text(json.dumps(settings))
    with pytest.warns(UserWarning, match="records no checksums"), pytest.raises(ValueError) as err:
        PerturbationPredictor.load(tmp_path / "predictor")
    assert str(err.value).startswith(f"{path} does not hold the settings opencellplm writes (KeyError: 'control')")
