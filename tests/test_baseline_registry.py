"""One registry of baselines per task, each called with its task's one signature; names resolve to something."""

from __future__ import annotations

import inspect

import pytest

from opencellplm.baselines.registry import REGISTRY, TASKS, baselines_for

#: The keyword arguments each task passes its baselines (the registry's table).
SIGNATURES = {
    "clustering": ["layer", "seed"],
    "integration": ["batch_key", "layer", "seed"],
    "annotation": ["labels_key", "layer", "seed"],
    "denoising": ["layer", "seed"],
    "imputation": ["spatial_layer", "reference_layer", "seed"],
    "perturbation": ["control", "seed", "train_cells", "labels_key"],
}


@pytest.mark.parametrize("task", TASKS)
def test_every_baseline_of_a_task_takes_that_task_s_one_signature(task):
    assert REGISTRY[task], f"{task} has no baseline"
    for name, baseline in REGISTRY[task].items():
        keywords = [p.name for p in inspect.signature(baseline.run).parameters.values() if p.kind == p.KEYWORD_ONLY]
        keywords = [k for k in keywords if k != "f"]  # a bound default of the wrapper, not an argument
        assert keywords == SIGNATURES[task], (task, name)
        assert baseline.name == name and baseline.task == task


def test_names_resolve_to_baselines_or_are_refused_naming_the_choices():
    assert list(baselines_for("imputation")) == ["reference_mean", "spage_style", "tangram", "gimvi"]
    assert list(baselines_for("denoising", ["scvi", "unchanged"])) == ["scvi", "unchanged"]  # in the order asked
    with pytest.raises(ValueError, match=r"unknown baseline\(s\) \['stplus'\] for imputation; choose among"):
        baselines_for("imputation", ["spage_style", "stplus"])  # not in this version: refused, not a skipped row
    with pytest.raises(ValueError, match=r"unknown task 'batch_correction'"):
        baselines_for("batch_correction")


def test_a_baseline_package_that_fails_on_the_data_is_a_row_saying_so_and_ours_raise():
    from opencellplm.baselines.registry import Baseline, run_baseline

    def diverges(*args, **kwargs):
        raise ValueError(
            "Expected parameter loc to satisfy the constraint Real(), but found invalid values:\ntensor(...)"
        )

    result, why = run_baseline(Baseline("gimvi", "imputation", diverges, extra="scvi"))
    assert (
        result is None
        and why
        == "failed: ValueError: Expected parameter loc to satisfy the constraint Real(), but found invalid values:"
    )
    with pytest.raises(ValueError, match="Expected parameter loc"):  # a baseline of this package: its error stands
        run_baseline(Baseline("spage_style", "imputation", diverges))
