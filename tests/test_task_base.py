"""What the four task classes share through ``tasks/base.py``: the same constructors (``device=`` included), the
shared recipe's checks, and the same refusal of an unfitted task."""

from __future__ import annotations

import pytest

from opencellplm.config import ConfigError
from opencellplm.tasks import CellTypeAnnotator, Denoiser, PerturbationPredictor
from opencellplm.tasks.annotation import AnnotationRecipe
from opencellplm.tasks.base import FineTunedTask, FineTuneRecipe, _device
from opencellplm.tasks.denoising import DenoisingRecipe
from opencellplm.tasks.imputation import ImputationRecipe, SpatialImputer
from opencellplm.tasks.perturbation import PerturbationRecipe

from .conftest import small_model

GENES = [f"GENE{i}" for i in range(40)]
TASKS = [CellTypeAnnotator, Denoiser, SpatialImputer, PerturbationPredictor]
RECIPES = [AnnotationRecipe, DenoisingRecipe, ImputationRecipe, PerturbationRecipe]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.__name__)
def test_every_task_is_built_alike_and_takes_a_device(task, tmp_path):
    model = small_model(GENES)
    model.save(tmp_path / "model")
    assert issubclass(task, FineTunedTask)
    for build in (task.from_pretrained, task.from_scratch):
        built = build(tmp_path / "model", device="cpu")
        assert str(built.base.device) == "cpu" and isinstance(built.recipe, task.recipe_type)
        assert not built.fitted
    assert task.from_pretrained(model, device="cpu").base is model  # a loaded model on that device: used as is
    assert _device("cuda") == _device("cuda:0") != _device("cpu")  # one GPU under its two names
    with pytest.raises(ValueError, match=r"the model given is on cpu, not meta: move it first"):
        task.from_pretrained(model, device="meta")


@pytest.mark.parametrize("task, recipe", list(zip(TASKS, RECIPES)), ids=lambda t: getattr(t, "__name__", ""))
def test_a_task_refuses_another_task_s_recipe(task, recipe):
    other = AnnotationRecipe if recipe is not AnnotationRecipe else DenoisingRecipe
    with pytest.raises(TypeError, match=rf"recipe must be a {recipe.__name__}, not {other.__name__}"):
        task.from_pretrained(small_model(GENES), recipe=other())


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.__name__)
@pytest.mark.parametrize(
    "change, message",
    [
        ({"steps": 0}, r"\.steps must be a positive integer, got 0"),
        ({"eval_every": 1.5}, r"\.eval_every must be a positive integer, got 1\.5"),
        ({"patience": -1}, r"\.patience must be a non-negative integer, got -1"),
        ({"lr": -1e-3}, r"\.lr must be a number >= 0, got -0\.001"),
        ({"grad_clip": "big"}, r"\.grad_clip must be a number >= 0, got 'big'"),
        ({"precision": "fp16"}, r"\.precision='fp16'; choose one of \['auto', 'fp32', 'bf16'\]"),
    ],
)
def test_every_recipe_checks_the_shared_settings(recipe, change, message):
    assert issubclass(recipe, FineTuneRecipe)
    with pytest.raises(ConfigError, match=rf"{recipe.__name__}{message}"):
        recipe(**change)


def test_the_shared_settings_reach_the_trainer():
    config = DenoisingRecipe(steps=7, warmup_steps=20, lr=1e-3, patience=2, eval_every=3, seed=5).train_config()
    assert (config.steps, config.warmup_steps, config.lr, config.patience, config.eval_every) == (7, 6, 1e-3, 2, 3)
    assert config.seed == 5 and config.min_lr_ratio == 0.1


@pytest.mark.parametrize("task", [CellTypeAnnotator, PerturbationPredictor], ids=lambda t: t.__name__)
def test_a_task_that_needs_fitting_says_so(task, tmp_path):
    unfitted = task.from_pretrained(small_model(GENES))
    message = rf"this {task.noun} is not fitted; call fit\(\) first, or load\(\) a saved one"
    with pytest.raises(ValueError, match=message):
        unfitted.save(tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_every_score_result_is_a_task_result_that_the_benchmark_reads_alike():
    from opencellplm.tasks import AnnotationScores, DenoisingResult, PerturbationResult
    from opencellplm.tasks.imputation import ImputationResult
    from opencellplm.tasks.result import TaskResult

    for result in (AnnotationScores, DenoisingResult, ImputationResult, PerturbationResult):
        assert issubclass(result, TaskResult)
    row = {"n_genes": 3, "n_undefined_pearson": 0, "peak_memory_mb": 5.0}
    rows = [
        {"fold": 0, "method": "cellplm_fine_tuned", "pearson": 0.2, "cosine": 0.5, "rmse": 1.0}
        | row
        | {"fit_seconds": 2.0, "predict_seconds": 1.0, "params": {"steps": 10}},
        {"fold": 1, "method": "cellplm_fine_tuned", "pearson": 0.4, "cosine": 0.7, "rmse": 2.0}
        | row
        | {"fit_seconds": 3.0, "predict_seconds": 1.0, "peak_memory_mb": 9.0, "params": {"steps": 12}},
        {"fold": 0, "method": "spage_style", "pearson": 0.5, "cosine": 0.6, "rmse": 0.5}
        | row
        | {"fit_seconds": None, "predict_seconds": 0.5, "params": {"seed": 0}},
    ]
    result = ImputationResult(
        folds=[["a"], ["b"]], scored_folds=[0, 1], seed=0, rows=rows, skipped={"x": "why"}, n_spatial_cells=9,
        n_shared_genes=2, checkpoint={}, recipe={}, version="0",
    )  # fmt: skip
    tuned, spage = result.methods
    assert tuned.scores == pytest.approx({"pearson": 0.3, "cosine": 0.6, "rmse": 1.5})
    assert (tuned.seconds, tuned.fit_seconds, tuned.peak_mb, tuned.params["steps"]) == (7.0, 5.0, 9.0, [10, 12])
    assert spage.family == "baseline" and spage.fit_seconds is None and spage.seconds == 0.5
    assert result["spage_style"] == spage and list(result.method_frame().index) == ["cellplm_fine_tuned", "spage_style"]
    with pytest.raises(KeyError, match=r"no method 'tangram' in this result; it has \['cellplm_fine_tuned'"):
        result["tangram"]


def test_every_task_call_takes_an_input_spec_and_or_its_fields():
    import numpy as np

    from opencellplm.data import InputSpec
    from opencellplm.tasks.base import resolve_spec
    from opencellplm.testing import synthetic_adata

    saved = InputSpec(layer="counts", max_cells=50)
    assert resolve_spec(None, {}, saved) is saved  # nothing given: the fit's
    assert resolve_spec(saved, {"max_cells": 9}) == InputSpec(layer="counts", max_cells=9)  # keywords win
    assert resolve_spec(None, {"sample_key": "s"}) == InputSpec(sample_key="s")
    with pytest.raises(TypeError, match=r"unknown input setting\(s\) \['layers'\]; the InputSpec fields are"):
        resolve_spec(None, {"layers": "counts"})
    with pytest.raises(TypeError, match="spec must be an InputSpec or None, not dict"):
        resolve_spec({"layer": "counts"}, {})
    adata = synthetic_adata(60, 40, gene_names=GENES, seed=1)
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X * 0  # only the layer holds counts: a spec that misses it would fail or differ
    denoiser = Denoiser.from_pretrained(small_model(GENES))
    by_spec = denoiser.get_denoised(adata, spec=InputSpec(layer="counts", sample_key="sample"))
    np.testing.assert_array_equal(by_spec, denoiser.get_denoised(adata, layer="counts", sample_key="sample"))


def test_an_imputation_result_whose_every_method_was_skipped_still_reads():
    from opencellplm.tasks.imputation import ImputationResult

    result = ImputationResult(
        folds=[["a"]], scored_folds=[0], seed=0, rows=[], skipped={"gimvi": "failed: ValueError: NaN"},
        n_spatial_cells=3, n_shared_genes=2, checkpoint={}, recipe={}, version="0",
    )  # fmt: skip
    assert result.methods == [] and result.to_frame().empty and result.per_fold().empty
