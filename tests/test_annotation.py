"""Cell type annotation: fine-tuning on the shared trainer, label strings out, scores beside baselines,
save / load with the label names, and every bad input as a clear error."""

from __future__ import annotations

import json
import logging
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from opencellplm import CellPLM
from opencellplm.cli import main
from opencellplm.tasks import AnnotationRecipe, CellTypeAnnotator
from opencellplm.testing import synthetic_adata

from .conftest import small_model

GENES = [f"GENE{i}" for i in range(60)]
QUICK = AnnotationRecipe(steps=12, eval_every=3, warmup_steps=2, patience=0, precision="fp32")


@pytest.fixture
def base() -> CellPLM:
    return small_model(GENES)


@pytest.fixture
def cells() -> ad.AnnData:
    adata = synthetic_adata(240, 60, n_types=3, seed=0)
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    adata.obs["is_test"] = np.arange(adata.n_obs) % 4 == 0
    return adata


def test_fit_predict_writes_label_strings_and_probabilities(base, cells):
    annotator = CellTypeAnnotator.from_pretrained(base, recipe=QUICK)
    before = cells.X.copy()
    annotator.fit(cells, "cell_type", train_cells=~cells.obs["is_test"].to_numpy(), max_cells=80)
    assert annotator.summary.n_train + annotator.summary.n_validation == 180 and annotator.summary.steps == 12
    annotator.predict(cells)
    labels = cells.obs["cellplm_label"]
    assert list(labels.cat.categories) == ["type_0", "type_1", "type_2"]
    probabilities = cells.obsm["cellplm_label_probabilities"]
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    chosen = probabilities[np.arange(cells.n_obs), labels.cat.codes.to_numpy()]
    np.testing.assert_allclose(cells.obs["cellplm_label_probability"], chosen)
    # key_added names every column the prediction writes, beside the default ones
    annotator.predict(cells, key_added="mine")
    assert (cells.obs["mine"] == labels).all() and "mine_probability" in cells.obs
    np.testing.assert_allclose(cells.obsm["mine_probabilities"], probabilities)
    assert set(cells.uns["cellplm"]) == {"cellplm_label", "mine"}
    record = cells.uns["cellplm"]["cellplm_label"]
    assert list(record["classes"]) == ["type_0", "type_1", "type_2"] and record["params"]["mode"] == "inductive"
    assert record["params"]["max_cells"] == 80
    assert (cells.X != before).nnz == 0  # the counts are untouched


def test_fine_tuning_learns_separable_types(base, cells):
    recipe = AnnotationRecipe(steps=120, eval_every=10, warmup_steps=5, patience=0, precision="fp32")
    annotator = CellTypeAnnotator.from_pretrained(base, recipe=recipe)
    annotator.fit(cells, "cell_type", train_cells=~cells.obs["is_test"].to_numpy())
    scores = annotator.score(cells, "cell_type", baselines=("knn_on_pca",), seed=3)
    frame = scores.to_frame()
    assert scores.n_test == 60 and scores.mode == "inductive"
    assert scores["knn_on_pca"].params["seed"] == 3 == scores.settings["seed"]  # the baseline got it
    assert [m.family for m in scores.methods] == ["cellplm", "baseline"] and scores.skipped == {}
    assert frame.loc["cellplm", "accuracy"] > 0.8  # chance is 1/3
    assert set(frame.index) == {"cellplm", "knn_on_pca"}
    assert frame.loc["knn_on_pca", "accuracy"] > 0.6


def test_transductive_mode_is_recorded_and_sees_all_cells(base, cells):
    annotator = CellTypeAnnotator.from_pretrained(base, recipe=QUICK)
    annotator.fit(cells, "cell_type", mode="transductive", train_cells=~cells.obs["is_test"].to_numpy())
    scores = annotator.score(cells, "cell_type", baselines=())
    assert scores.mode == "transductive" and scores.to_frame().index.name == "method (transductive)"
    assert scores.n_test == 60  # the cells fit did not learn from


def test_from_scratch_differs_from_pretrained_and_is_named_so(base, cells):
    scratch = CellTypeAnnotator.from_scratch(base, recipe=QUICK).fit(cells, "cell_type")
    pretrained = CellTypeAnnotator.from_pretrained(base, recipe=QUICK).fit(cells, "cell_type")
    ours = scratch.module.state_dict()["embedder.gene_embedding"]
    assert not torch.equal(ours, base.module.state_dict()["embedder.gene_embedding"])
    for annotator, name in ((scratch, "cellplm_from_scratch"), (pretrained, "cellplm")):
        result = annotator.score(cells, "cell_type", test_cells=cells.obs["is_test"], baselines=())
        assert [m.method for m in result.methods] == [name]


def test_save_load_round_trip_keeps_the_label_names(base, cells, tmp_path):
    annotator = CellTypeAnnotator.from_pretrained(base, recipe=QUICK).fit(cells, "cell_type")
    annotator.save(tmp_path / "annotator")
    again = CellTypeAnnotator.load(tmp_path / "annotator")
    assert again.classes == ["type_0", "type_1", "type_2"] and again.mode == "inductive"
    first, second = annotator.get_predictions(cells), again.get_predictions(cells)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_allclose(first.probabilities, second.probabilities, atol=1e-6)
    (tmp_path / "annotator" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a annotator written by opencellplm|not an annotator"):
        annotator.save(tmp_path / "annotator", overwrite=True)
    assert (tmp_path / "annotator" / "notes.txt").read_text() == "mine"


def test_unseen_test_labels_are_reported(base, cells, caplog):
    train = ~cells.obs["is_test"].to_numpy()
    annotator = CellTypeAnnotator.from_pretrained(base, recipe=QUICK).fit(cells, "cell_type", train_cells=train)
    cells.obs.loc[cells.obs["is_test"], "cell_type"] = "type_new"
    with caplog.at_level(logging.WARNING):
        scores = annotator.score(cells, "cell_type", baselines=())
    assert scores.unseen_labels == ["type_new"]
    assert "test labels never seen in training: ['type_new'] (60 cells); they count as errors" in caplog.text
    assert scores["cellplm"].scores["accuracy"] == 0 == scores.classification["cellplm"].accuracy


# ------------------------------------------------------------------------------------------------ bad input
def test_no_labels_column(base, cells):
    with pytest.raises(KeyError, match=r"obs column 'celltype' not found; adata.obs has \['cell_type'"):
        CellTypeAnnotator.from_pretrained(base, recipe=QUICK).fit(cells, "celltype")


def test_one_class_only(base, cells):
    cells.obs["cell_type"] = "T"
    with pytest.raises(ValueError, match=r"'cell_type' has one class only \(\['T'\]\); annotation needs at least two"):
        CellTypeAnnotator.from_pretrained(base, recipe=QUICK).fit(cells, "cell_type")


def test_missing_labels_are_left_out_and_counted_or_refused_when_none(base, cells, caplog):
    cells.obs.loc[cells.obs_names[:30], "cell_type"] = None
    with caplog.at_level(logging.WARNING):
        annotator = CellTypeAnnotator.from_pretrained(base, recipe=QUICK).fit(cells, "cell_type")
    assert "30 cells have no 'cell_type' label (NaN, None, empty or the text of a missing value" in caplog.text
    assert annotator.summary.n_unlabelled_left_out == 30
    assert annotator.summary.n_train + annotator.summary.n_validation == 210
    cells.obs["cell_type"] = None
    with pytest.raises(ValueError, match="no cell has a 'cell_type' label to learn from"):
        CellTypeAnnotator.from_pretrained(base, recipe=QUICK).fit(cells, "cell_type")


def test_empty_validation_split(base, cells):
    recipe = AnnotationRecipe(steps=2, validation_fraction=0.0)
    with pytest.raises(ValueError, match=r"the validation split is empty .*raise validation_fraction"):
        CellTypeAnnotator.from_pretrained(base, recipe=recipe).fit(cells, "cell_type")


def test_data_whose_genes_barely_overlap_the_model(base, cells):
    annotator = CellTypeAnnotator.from_pretrained(base, recipe=QUICK).fit(cells, "cell_type")
    other = cells.copy()
    other.var_names = [f"OTHER{i}" for i in range(59)] + ["GENE0"]
    other.X[:, -1] = 0
    other.X[:2, -1] = 1
    with pytest.raises(ValueError, match="carry only .* of the counts"):
        annotator.predict(other)
    assert "cellplm_label" not in other.obs
    other.var_names = [f"OTHER{i}" for i in range(60)]
    with pytest.raises(ValueError, match="none of the 60 genes in var_names is in the model's vocabulary"):
        annotator.predict(other)


def test_unfitted_annotator_and_views(base, cells):
    annotator = CellTypeAnnotator.from_pretrained(base, recipe=QUICK)
    with pytest.raises(ValueError, match="this annotator is not fitted; call fit"):
        annotator.predict(cells)
    annotator.fit(cells, "cell_type")
    with pytest.raises(ValueError, match="adata is a view"):
        annotator.predict(cells[:10])


def test_non_finite_loss_stops_and_keeps_the_last_good_state(base, cells, caplog):
    """An absurd learning rate blows the weights up; the run stops and the last evaluated state is kept."""
    from dataclasses import replace

    annotator = CellTypeAnnotator.from_pretrained(base, recipe=replace(QUICK, lr=1e30, warmup_steps=0, eval_every=1))
    with caplog.at_level(logging.ERROR):
        annotator.fit(cells, "cell_type")
    assert "non-finite" in caplog.text and "training stopped, the last good weights are kept" in caplog.text
    assert annotator.summary.steps < QUICK.steps
    state = annotator.module.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values())
    assert annotator.get_predictions(cells).labels.tolist().count(None) == 0


# ------------------------------------------------------------------------------------------------------- CLI
def test_cli_fit_predict_score(base, cells, tmp_path, capsys):
    base.save(tmp_path / "ckpt")
    cells.write_h5ad(tmp_path / "cells.h5ad")
    common = ["--labels-key", "cell_type", "--test-key", "is_test"]
    fit = ["annotate", "fit", str(tmp_path / "cells.h5ad"), "--checkpoint", str(tmp_path / "ckpt"), *common]
    assert main([*fit, "--out", str(tmp_path / "ann"), "--steps", "6"]) == 0
    settings = json.loads((tmp_path / "ann" / "annotator.json").read_text())
    assert settings["classes"] == ["type_0", "type_1", "type_2"] and settings["fit"]["n_train"] < 180
    predict = ["annotate", "predict", str(tmp_path / "cells.h5ad"), "--annotator", str(tmp_path / "ann")]
    assert main([*predict, "--out", str(tmp_path / "out.h5ad")]) == 0
    assert ad.read_h5ad(tmp_path / "out.h5ad").obs["cellplm_label"].notna().all()
    capsys.readouterr()
    score = ["annotate", "score", str(tmp_path / "cells.h5ad"), "--annotator", str(tmp_path / "ann"), *common]
    assert main([*score, "--baselines", "knn_on_pca", "--json", str(tmp_path / "s.json")]) == 0
    table = capsys.readouterr().out
    assert "method (inductive)" in table and "cellplm" in table and "knn_on_pca" in table
    assert json.loads((tmp_path / "s.json").read_text())["n_test"] == 60
    (tmp_path / "s.json").write_text("the user's notes")  # an existing --json file is never replaced silently
    assert main([*score, "--baselines", "knn_on_pca", "--json", str(tmp_path / "s.json")]) == 2
    assert (tmp_path / "s.json").read_text() == "the user's notes"
    assert main([*score, "--baselines", "knn_on_pca", "--json", str(tmp_path / "s.json"), "--overwrite"]) == 2
    assert (tmp_path / "s.json").read_text() == "the user's notes"  # --overwrite replaces only our own results
    (tmp_path / "s.json").unlink()
    assert main([*score, "--baselines", "knn_on_pca", "--json", str(tmp_path / "s.json")]) == 0
    assert main([*score, "--baselines", "knn_on_pca", "--json", str(tmp_path / "s.json"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["n_test"] == 60


def test_cli_errors(tmp_path, cells, caplog):
    cells.write_h5ad(tmp_path / "cells.h5ad")
    with caplog.at_level(logging.ERROR):
        assert main(["annotate", "fit", str(tmp_path / "cells.h5ad"), "--out", str(tmp_path / "a")]) == 2
    assert "annotate fit needs --labels-key" in caplog.text
    cells.obs["is_test"] = cells.obs["is_test"].astype(str)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    with caplog.at_level(logging.ERROR):
        args = ["annotate", "fit", str(tmp_path / "cells.h5ad"), "--labels-key", "cell_type", "--test-key", "is_test"]
        assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "obs column 'is_test' must hold True/False" in caplog.text


def test_a_non_finite_training_loss_stops_and_keeps_the_evaluated_state(base, cells, monkeypatch, caplog):
    from dataclasses import replace

    from opencellplm.tasks.annotation import AnnotationObjective

    real, calls = AnnotationObjective.loss, []

    def loss_turning_nan(self, model, item, device, autocast):
        loss, n = real(self, model, item, device, autocast)
        calls.append(1)
        return (replace(loss, total=loss.total * float("nan")) if len(calls) > 4 else loss), n

    monkeypatch.setattr(AnnotationObjective, "loss", loss_turning_nan)
    annotator = CellTypeAnnotator.from_pretrained(base, recipe=replace(QUICK, eval_every=2))
    with caplog.at_level(logging.ERROR):
        annotator.fit(cells, "cell_type")
    assert "non-finite loss at step 5 (item 0); lower train.lr or use precision fp32" in caplog.text
    assert annotator.summary.steps == 4 and [h["step"] for h in annotator.summary.history] == [2, 4]
    assert all(torch.isfinite(v).all() for v in annotator.module.state_dict().values())


def test_the_kept_step_is_the_best_f1_then_the_lowest_validation_loss(base, cells, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="opencellplm"):
        annotator = CellTypeAnnotator.from_pretrained(base, recipe=QUICK).fit(cells, "cell_type")
    history = annotator.summary.history
    best = min(history, key=lambda h: (-h["val_f1"], h["val_loss"]))  # the first of exact ties
    assert annotator.summary.best_step == best["step"] and annotator.summary.steps == 12
    assert f"kept the weights of step {best['step']} of 12 run" in caplog.text
    annotator.save(tmp_path / "ann")
    assert json.loads((tmp_path / "ann" / "annotator.json").read_text())["fit"]["best_step"] == best["step"]


# ------------------------------------------------------------------------------------------- saved annotators
@pytest.fixture
def saved(base, cells, tmp_path):
    """An annotator fitted on ``cells`` (test cells left out) and saved to tmp_path/ann."""
    train = ~cells.obs["is_test"].to_numpy()
    CellTypeAnnotator.from_pretrained(base, recipe=QUICK).fit(cells, "cell_type", train_cells=train).save(
        tmp_path / "ann"
    )
    return tmp_path / "ann"


def edit(folder, change, *, resign=False, drop_checksums=False):
    """Apply ``change`` to the settings of ``folder/annotator.json``; ``resign`` records the edited content's
    sha256 (as a careful forger would), ``drop_checksums`` makes it look saved by an earlier opencellplm."""
    path = folder / "annotator.json"
    settings = json.loads(path.read_text())
    change(settings)
    if resign and CHECKSUMS in settings:
        from opencellplm.tasks._saved import _digest

        settings[CHECKSUMS]["settings"] = _digest(
            {k: v for k, v in settings.items() if k != CHECKSUMS}, settings[CHECKSUMS]["files"]
        )
    if drop_checksums:
        settings.pop(CHECKSUMS, None)
    path.write_text(json.dumps(settings, indent=2))


CHECKSUMS = "sha256"  # the key of the checksums in a saved task's settings file


def swap_classes(settings):
    settings["classes"][0], settings["classes"][1] = settings["classes"][1], settings["classes"][0]


def test_a_saved_annotator_records_checksums_of_its_content(saved):
    settings = json.loads((saved / "annotator.json").read_text())
    files = settings["sha256"]["files"]
    assert set(files) == {"model/config.json", "model/genes.txt", "model/model.safetensors", "model/meta.json"}
    assert all(len(digest) == 64 for digest in files.values())


def test_swapped_class_names_are_refused_naming_the_file(saved, cells, tmp_path, caplog):
    edit(saved, swap_classes)
    with pytest.raises(ValueError, match=r"annotator\.json was changed after the annotator was saved"):
        CellTypeAnnotator.load(saved)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    predict = ["annotate", "predict", str(tmp_path / "cells.h5ad"), "--annotator", str(saved)]
    with caplog.at_level(logging.ERROR):
        assert main([*predict, "--out", str(tmp_path / "p.h5ad")]) == 2
    assert f"{saved / 'annotator.json'} was changed after the annotator was saved" in caplog.text
    assert not (tmp_path / "p.h5ad").exists()


def test_swapped_class_names_with_a_recomputed_checksum_disagree_with_the_other_copies(saved):
    edit(saved, swap_classes, resign=True)
    with pytest.raises(ValueError, match=r"lists the classes \['type_1', 'type_0', 'type_2'\] but 'fit.classes' in"):
        CellTypeAnnotator.load(saved)


def test_changed_weights_are_refused_naming_the_file(saved):
    weights = saved / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors was changed after the annotator was saved"):
        CellTypeAnnotator.load(saved)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing from the saved annotator"):
        CellTypeAnnotator.load(saved)


def test_an_annotator_saved_before_checksums_loads_with_a_warning(saved, cells):
    first = CellTypeAnnotator.load(saved).get_predictions(cells)
    edit(saved, lambda s: s.pop("fit_data", None), drop_checksums=True)  # what earlier versions wrote
    with pytest.warns(UserWarning, match=r"annotator\.json records no checksums .* to add them, fit it again"):
        again = CellTypeAnnotator.load(saved)
    np.testing.assert_array_equal(again.get_predictions(cells).labels, first.labels)
    edit(saved, swap_classes)  # and an edited one of that age is still refused: its copies disagree
    with pytest.warns(UserWarning, match="records no checksums"), pytest.raises(ValueError, match="'fit.classes'"):
        CellTypeAnnotator.load(saved)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s["classes"].__setitem__(1, "type_0"), r"'classes' names \['type_0'\] more than once"),
        (lambda s: s.__setitem__("classes", "abc"), r"'classes' must be a list of at least two label names, not 'abc'"),
        (lambda s: s["recipe"].__setitem__("stepz", 5), r"'recipe' has unknown settings \['stepz'\]"),
        (lambda s: s["recipe"].__setitem__("lr", "fast"), r"'recipe' has values of the wrong type: lr='fast'"),
        (lambda s: s.__setitem__("spec", "X"), r"'spec' must be an object of settings, not 'X'"),
        (
            lambda s: s["spec"].__setitem__("max_cells", "many"),
            r"'spec' has values of the wrong type: max_cells='many'",
        ),
        (lambda s: s["spec"].__setitem__("partition", "spiral"), r"'spec' has values of the wrong type: partition="),
        (lambda s: s["spec"].__setitem__("layer", 3), r"'spec' has values of the wrong type: layer=3"),
        (lambda s: s.__setitem__("mode", "psychic"), r"'mode' must be 'inductive' or 'transductive'"),
        (lambda s: s.__setitem__("fit_data", {"n_cells": 3}), r"'fit_data' is not the record opencellplm writes"),
    ],
)
def test_malformed_settings_are_refused_naming_the_file(saved, change, message):
    edit(saved, change, resign=True)
    with pytest.raises(ValueError, match=message) as caught:
        CellTypeAnnotator.load(saved)
    assert str(caught.value).startswith(str(saved / "annotator.json"))


# ------------------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize(
    "values, found",
    [
        ([1, "1", 2, 2.0, True, "True"], "bool: True; float: 2.0; int: 1, 2; str: '1', 'True'"),
        ([1, 2, 2.0], "float: 2.0; int: 1, 2"),
    ],
)
def test_labels_of_mixed_types_are_refused(base, cells, values, found):
    mixed = cells.copy()
    mixed.obs["mixed"] = pd.Series(
        [values[i % len(values)] for i in range(mixed.n_obs)], index=mixed.obs_names, dtype=object
    )
    annotator = CellTypeAnnotator.from_pretrained(base, recipe=QUICK)
    with pytest.raises(ValueError, match=re.escape(f"obs column 'mixed' mixes label types ({found})")):
        annotator.fit(mixed, "mixed")
    annotator.fit(cells, "cell_type")
    with pytest.raises(ValueError, match="mixes label types"):
        annotator.score(mixed, "mixed", baselines=())


def test_labels_of_one_type_are_accepted(base, cells):
    numbered = cells.copy()
    numbered.obs["code"] = numbered.obs["cell_type"].str[-1].astype(int)  # int64 codes 0, 1, 2
    annotator = CellTypeAnnotator.from_pretrained(base, recipe=QUICK).fit(numbered, "code")
    assert annotator.classes == ["0", "1", "2"]


def test_the_text_of_a_missing_label_is_no_cell_type(base, cells, caplog):
    texts = cells.copy()
    labels = texts.obs["cell_type"].to_numpy(dtype=object)
    labels[:12] = ["nan", "NaN", "", " None "] * 3  # what astype(str) and spreadsheets leave for a missing label
    labels[12] = np.nan
    texts.obs["cell_type"] = labels.astype(str)  # the NaN becomes "nan" too
    with caplog.at_level(logging.WARNING):
        annotator = CellTypeAnnotator.from_pretrained(base, recipe=QUICK).fit(texts, "cell_type")
    assert annotator.classes == sorted(cells.obs["cell_type"].unique())
    assert annotator.summary.n_unlabelled_left_out == 13
    assert "13 cells have no 'cell_type' label (NaN, None, empty or the text of a missing value" in caplog.text
    query = synthetic_adata(240, 60, n_types=3, seed=1)
    query.obs_names = [f"query{i}" for i in range(query.n_obs)]
    query.obs["cell_type"] = np.where(np.arange(query.n_obs) < 5, "nan", query.obs["cell_type"].astype(str))
    scores = annotator.score(query, "cell_type", baselines=("knn_on_pca",), reference=texts)
    assert scores.n_test == query.n_obs - 5  # unlabelled cells are not scored, nor learned by the baselines


# ------------------------------------------------------------------------------------------------- score
def test_scoring_the_fit_data_leaves_out_the_cells_fit_learned_from(saved, cells, caplog):
    annotator = CellTypeAnnotator.load(saved)
    scores = annotator.score(cells, "cell_type", baselines=("knn_on_pca",))  # baselines learn from the fit cells
    assert scores.n_test == 60  # the test cells, which fit left out
    with caplog.at_level(logging.WARNING):
        annotator.score(cells, "cell_type", test_cells=np.ones(cells.n_obs, bool), baselines=())
    assert "180 of the 240 test cells are cells the annotator learned from" in caplog.text
    with pytest.raises(ValueError, match="the reference is the data being scored"):
        annotator.score(cells, "cell_type", test_cells=cells.obs["is_test"].to_numpy(), reference=cells)


def test_cli_score_refuses_the_scored_file_as_reference(saved, cells, tmp_path, caplog, capsys):
    cells.write_h5ad(tmp_path / "cells.h5ad")
    score = ["annotate", "score", str(tmp_path / "cells.h5ad"), "--annotator", str(saved), "--labels-key", "cell_type"]
    with caplog.at_level(logging.ERROR):
        assert main([*score, "--reference", str(tmp_path / "cells.h5ad")]) == 2
    assert "--reference is the file being scored" in caplog.text
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main([*score, "--test-key", "is_test", "--baselines"]) == 0  # held-out cells only: no warning
    assert "learned from" not in caplog.text
    cells.obs["everything"] = True
    cells.write_h5ad(tmp_path / "cells.h5ad")
    with caplog.at_level(logging.WARNING):
        assert main([*score, "--test-key", "everything", "--baselines"]) == 0
    assert "180 of the 240 test cells are cells the annotator learned from" in caplog.text


def test_scoring_a_copy_of_data_fit_learned_entirely_from_is_refused(base, cells):
    annotator = CellTypeAnnotator.from_pretrained(base, recipe=QUICK).fit(cells, "cell_type")  # every labelled cell
    with pytest.raises(ValueError, match="this is the data the annotator was fitted on, and fit learned from every"):
        annotator.score(cells.copy(), "cell_type", baselines=())  # a copy: known by its cell names


def test_a_baseline_package_that_is_not_installed_is_a_skipped_row_saying_so(base, cells, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "celltypist", None)  # as if the baselines extra were not installed
    train = ~cells.obs["is_test"].to_numpy()
    annotator = CellTypeAnnotator.from_pretrained(base, recipe=QUICK).fit(cells, "cell_type", train_cells=train)
    scores = annotator.score(cells, "cell_type", baselines=("knn_on_pca", "celltypist"))
    assert [m.method for m in scores.methods] == ["cellplm", "knn_on_pca"]
    assert "CellTypist needs the baselines extra: pip install 'opencellplm[baselines]'" in scores.skipped["celltypist"]
    assert scores.to_dict()["skipped"] == scores.skipped
