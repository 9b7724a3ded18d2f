"""The baselines of each task, by name, each called with that task's one signature.

Every task's ``score`` picks its baselines here (:func:`baselines_for`), so a name means the same everywhere, an
unknown name gets the same message in every task, and a new baseline (a real package behind an extra) is one
entry. The signatures, keyword arguments after the data:

========================  =========================================================================================
task                      call
========================  =========================================================================================
``"clustering"``          ``run(adata, *, layer, seed)``: an embedding (cells x dims)
``"integration"``         ``run(adata, *, batch_key, layer, seed)``: an embedding (cells x dims) of cells of several
                          batches
``"annotation"``          ``run(train, test, *, labels_key, layer, seed)``: a label per test cell
``"denoising"``           ``run(corrupted, *, layer, seed)``: denoised counts (cells x genes)
``"imputation"``          ``run(spatial, reference, genes, *, spatial_layer, reference_layer, seed)``: the genes'
                          values in the spatial cells
``"perturbation"``        ``run(train_means, parsed, test_labels, *, control, seed, train_cells, labels_key)``: mean
                          log-normalised profiles (``train_cells``: the training cells' counts, their labels in
                          ``obs[labels_key]``)
========================  =========================================================================================

Each returns a :class:`~opencellplm.baselines.BaselineResult` whose ``params`` hold its settings (its seed
included, when it draws at random). A baseline whose optional package is missing raises ``ImportError`` naming
the extra; the task records it as skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from .._memory import PeakMemory
from . import annotation, denoising, embedding, imputation, integration, perturbation
from ._common import BaselineResult

TASKS = ("clustering", "integration", "annotation", "denoising", "imputation", "perturbation")


@dataclass(frozen=True)
class Baseline:
    """A baseline of one task: its name, how to run it (the task's signature), and the extra it needs."""

    name: str
    task: str
    run: Callable[..., BaselineResult]
    extra: str | None = None


def _entries() -> dict[str, dict[str, Baseline]]:
    registry: dict[str, dict[str, Baseline]] = {task: {} for task in TASKS}

    def add(task: str, name: str, run: Callable[..., BaselineResult], extra: str | None = None) -> None:
        registry[task][name] = Baseline(name, task, run, extra)

    add("clustering", "pca", lambda adata, *, layer, seed: embedding.pca_embedding(adata, layer=layer, seed=seed))
    add(
        "clustering",
        "scvi",
        lambda adata, *, layer, seed: embedding.scvi_embedding(adata, layer=layer, seed=seed),
        extra="scvi",
    )
    for name, function, extra in (
        ("pca", integration.pca_uncorrected, None),
        ("scvi", integration.scvi_integrated, "scvi"),
        ("harmony", integration.harmony, "baselines"),
        ("scanorama", integration.scanorama, "baselines"),
    ):
        add(
            "integration",
            name,
            lambda adata, *, batch_key, layer, seed, f=function: f(adata, batch_key=batch_key, layer=layer, seed=seed),
            extra=extra,
        )
    for name, function, extra in (
        ("celltypist_style", annotation.celltypist_style, None),
        ("l1_logistic_cv", annotation.l1_logistic_cv, None),
        ("knn_on_pca", annotation.knn_on_pca, None),
        ("celltypist", annotation.celltypist, "baselines"),
        ("scanvi", annotation.scanvi, "scvi"),
    ):
        add(
            "annotation",
            name,
            lambda train, test, *, labels_key, layer, seed, f=function: f(
                train, test, labels_key=labels_key, layer=layer, seed=seed
            ),
            extra=extra,
        )
    add("denoising", "unchanged", lambda corrupted, *, layer, seed: denoising.unchanged(corrupted, layer=layer))
    add(
        "denoising",
        "knn_smoothing",
        lambda corrupted, *, layer, seed: denoising.knn_smoothing(corrupted, layer=layer, seed=seed),
    )
    add("denoising", "mean_profile", lambda corrupted, *, layer, seed: denoising.mean_profile(corrupted, layer=layer))
    add(
        "denoising",
        "magic",
        lambda corrupted, *, layer, seed: denoising.magic(corrupted, layer=layer, seed=seed),
        extra="magic",
    )
    add(
        "denoising",
        "scvi",
        lambda corrupted, *, layer, seed: denoising.scvi_denoise(corrupted, layer=layer, seed=seed),
        extra="scvi",
    )
    add(
        "imputation",
        "reference_mean",
        lambda spatial, reference, genes, *, spatial_layer, reference_layer, seed: imputation.reference_mean(
            spatial, reference, genes, spatial_layer=spatial_layer, reference_layer=reference_layer
        ),
    )
    add(
        "imputation",
        "spage_style",
        lambda spatial, reference, genes, *, spatial_layer, reference_layer, seed: imputation.spage_style(
            spatial, reference, genes, spatial_layer=spatial_layer, reference_layer=reference_layer, seed=seed
        ),
    )
    add(
        "imputation",
        "tangram",
        lambda spatial, reference, genes, *, spatial_layer, reference_layer, seed: imputation.tangram(
            spatial, reference, genes, spatial_layer=spatial_layer, reference_layer=reference_layer, seed=seed
        ),
        extra="baselines",
    )
    add(
        "imputation",
        "gimvi",
        lambda spatial, reference, genes, *, spatial_layer, reference_layer, seed: imputation.gimvi(
            spatial, reference, genes, spatial_layer=spatial_layer, reference_layer=reference_layer, seed=seed
        ),
        extra="scvi",
    )
    add(
        "perturbation",
        "no_change",
        lambda means, parsed, test, *, control, seed, train_cells, labels_key: perturbation.perturbation_no_change(
            means, test, control=control
        ),
    )
    add(
        "perturbation",
        "training_mean",
        lambda means, parsed, test, *, control, seed, train_cells, labels_key: perturbation.perturbation_training_mean(
            means, test, control=control
        ),
    )
    add(
        "perturbation",
        "additive",
        lambda means, parsed, test, *, control, seed, train_cells, labels_key: perturbation.perturbation_additive(
            means, parsed, test, control=control
        ),
    )
    add(
        "perturbation",
        "linear",
        lambda means, parsed, test, *, control, seed, train_cells, labels_key: perturbation.perturbation_linear(
            means, parsed, test, control=control
        ),
    )
    add(
        "perturbation",
        "gears",
        lambda means, parsed, test, *, control, seed, train_cells, labels_key: perturbation.gears(
            means, parsed, test, control=control, seed=seed, train_cells=train_cells, labels_key=labels_key
        ),
        extra="baselines",
    )
    return registry


REGISTRY: dict[str, dict[str, Baseline]] = _entries()


def run_baseline(baseline: Baseline, *args, **kwargs) -> tuple[BaselineResult | None, str | None]:
    """``(result, None)``, or ``(None, why)`` for a row the task records as skipped: the optional package is not
    installed (its ``ImportError`` names the extra), or a baseline package failed on these data (``"failed: ..."``,
    the error's first line; a score never loses its other rows to another package's error). Errors of the
    baselines written here are raised: they are this package's to fix, or the input's.

    The result's ``peak_mb`` is how far the process's resident memory rose while the baseline ran (the CPU's
    memory: a package that trains on a GPU holds more there)."""
    try:
        with PeakMemory("cpu") as peak:
            result = baseline.run(*args, **kwargs)
        return replace(result, peak_mb=round(peak.mb, 1)), None
    except ImportError as err:
        return None, str(err)
    except Exception as err:
        if baseline.extra is None:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return None, f"failed: {type(err).__name__}: {first[:300]}"


def baselines_for(task: str, names=None) -> dict[str, Baseline]:
    """The baselines of ``task`` named in ``names`` (default: all of them), in that order; a ValueError names any
    unknown one and the task's choices."""
    if task not in REGISTRY:
        raise ValueError(f"unknown task {task!r}; choose among {list(REGISTRY)}")
    known = REGISTRY[task]
    names = list(known) if names is None else list(names)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown} for {task}; choose among {list(known)}")
    return {name: known[name] for name in names}
