"""How much work one benchmark run does: the CI-sized ``quick`` profile and the ``full`` one."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Profile:
    """Sizes of one benchmark run; every task reads its own fields.

    Attributes
    ----------
    seeds
        Default seeds (``--seeds N`` takes the first N of ``0, 1, 2, ...``).
    max_cells
        Largest number of cells taken from a data set of clustering, annotation and denoising (a seeded subset,
        stratified by label where there are labels); None: all.
    imputation_max_cells
        The same for each of the spatial data and the reference of the imputation task.
    annotation_steps, denoising_steps, imputation_steps, perturbation_steps, integration_steps
        Fine-tuning steps at most (early stopping may end a fit sooner).
    imputation_folds, imputation_folds_scored
        Genes are dealt into ``imputation_folds`` folds; each seed scores this many of them (seed-dependent).
    imputation_max_per_bin
        Held-out genes per zero-rate bin and fold on MERFISH (BDTNP holds out every gene once).
    imputation_variants
        CellPLM variants of the imputation task (see :data:`opencellplm.tasks.imputation.VARIANTS`).
    perturbation_genes, perturbation_single, perturbation_combo, perturbation_cells
        Size of the simulated Perturb-seq data.
    """

    name: str
    seeds: int
    max_cells: int | None
    imputation_max_cells: int | None
    annotation_steps: int
    denoising_steps: int
    imputation_steps: int
    imputation_folds: int
    imputation_folds_scored: int
    imputation_max_per_bin: int
    imputation_variants: tuple[str, ...]
    perturbation_steps: int
    perturbation_genes: int
    perturbation_single: int
    perturbation_combo: int
    perturbation_cells: int
    integration_steps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick",
        seeds=1,
        max_cells=300,
        imputation_max_cells=300,
        annotation_steps=10,
        denoising_steps=5,
        imputation_steps=5,
        imputation_folds=5,
        imputation_folds_scored=1,
        imputation_max_per_bin=5,
        imputation_variants=("fine_tuned", "from_scratch"),
        perturbation_steps=5,
        perturbation_genes=60,
        perturbation_single=8,
        perturbation_combo=4,
        perturbation_cells=15,
        integration_steps=5,
    ),
    "full": Profile(
        name="full",
        seeds=3,
        max_cells=1000,
        imputation_max_cells=None,
        annotation_steps=300,
        denoising_steps=60,
        imputation_steps=150,
        imputation_folds=5,
        imputation_folds_scored=1,
        imputation_max_per_bin=25,
        imputation_variants=("fine_tuned", "from_scratch"),
        perturbation_steps=300,
        perturbation_genes=500,
        perturbation_single=60,
        perturbation_combo=40,
        perturbation_cells=50,
        integration_steps=60,
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {list(PROFILES)}")
    return PROFILES[name]
