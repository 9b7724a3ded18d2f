"""Scores for the downstream tasks: numpy (or scipy sparse) in, floats and small frozen dataclasses out.

- :func:`clustering_scores`: kNN graph + Leiden sweep on an embedding, ARI and NMI against labels (TASKS §2);
- :func:`classification_scores`: macro F1, macro precision, accuracy, confusion matrix (TASKS §4);
- :func:`hide_counts` and :func:`denoising_scores`: the paper's denoising protocol (TASKS §3);
- :func:`molecular_split` and :func:`mcv_scores`: molecular cross-validation (Batson et al. 2019, OpenProblems);
One module per family (:mod:`.clustering`, :mod:`.classification`, :mod:`.denoising`, :mod:`.imputation`,
:mod:`.perturbation`, :mod:`.neighbours`); this package re-exports their public names.

- spatial imputation (TASKS §5, module :mod:`.imputation`): :func:`zero_rates`, :func:`held_out_gene_folds`,
  :func:`imputation_scores`.
- :func:`condition_means`, :func:`top_de_genes` and :func:`perturbation_scores`: perturbation prediction on mean
  log-normalised profiles (TASKS §6; :mod:`opencellplm.metrics.perturbation`).
"""

from __future__ import annotations

from .._lognorm import TARGET_SUM
from .classification import ClassificationScores, classification_scores
from .clustering import DEFAULT_RESOLUTIONS, ClusteringScores, clustering_scores
from .denoising import (
    BLOCK_ROWS,
    POISSON_EPS,
    DenoisingScores,
    MCVScores,
    denoising_scores,
    hide_counts,
    mcv_scores,
    molecular_split,
)
from .imputation import (
    ZERO_RATE_BINS,
    ImputationScores,
    bin_labels,
    held_out_gene_folds,
    imputation_scores,
    zero_rate_bin,
    zero_rates,
)
from .neighbours import knn_label_agreement, neighbourhood_agreement
from .perturbation import PerturbationScores, condition_means, perturbation_scores, top_de_genes

__all__ = [
    "condition_means",
    "perturbation_scores",
    "PerturbationScores",
    "top_de_genes",
    "bin_labels",
    "BLOCK_ROWS",
    "classification_scores",
    "ClassificationScores",
    "clustering_scores",
    "ClusteringScores",
    "DEFAULT_RESOLUTIONS",
    "denoising_scores",
    "DenoisingScores",
    "held_out_gene_folds",
    "hide_counts",
    "imputation_scores",
    "ImputationScores",
    "mcv_scores",
    "knn_label_agreement",
    "neighbourhood_agreement",
    "MCVScores",
    "molecular_split",
    "POISSON_EPS",
    "TARGET_SUM",
    "zero_rate_bin",
    "ZERO_RATE_BINS",
    "zero_rates",
]
