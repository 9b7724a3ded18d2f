"""Baselines beside CellPLM: plain functions fed the same data, each returning a :class:`BaselineResult`.

- embeddings (zero-shot clustering): :func:`pca_embedding`, :func:`scvi_embedding` (extra ``scvi``);
- cell type annotation, trained on one AnnData and predicting another: :func:`celltypist_style`,
  :func:`l1_logistic_cv`, :func:`knn_on_pca`, CellTypist itself, :func:`celltypist` (extra ``baselines``), and
  scANVI, :func:`scanvi` (extra ``scvi``);
- denoising, on the corrupted counts: :func:`unchanged`, :func:`knn_smoothing`, :func:`magic` (extra ``magic``),
  :func:`scvi_denoise` (extra ``scvi``);
- spatial imputation, from a spatial panel and an scRNA-seq reference (module :mod:`.imputation`):
  :func:`reference_mean`, :func:`spage_style`.
- perturbation prediction, on mean log-normalised profiles (:mod:`opencellplm.baselines.perturbation`):
  :func:`perturbation_no_change`, :func:`perturbation_training_mean`, :func:`perturbation_additive`,
  :func:`perturbation_linear`.

One module per family (:mod:`.embedding`, :mod:`.annotation`, :mod:`.denoising`, :mod:`.imputation`,
:mod:`.perturbation`; shared pieces in :mod:`._common`); this package re-exports their public names.

Every function reads counts from ``adata.X`` or ``adata.layers[layer]`` (dense, sparse or backed), works on
copies (the input AnnData is never modified), logs what it does through :mod:`logging` and times itself.
"""

from __future__ import annotations

from .._lognorm import TARGET_SUM
from ._common import CLIP, BaselineResult
from .annotation import L1_CS, celltypist, celltypist_style, knn_on_pca, l1_logistic_cv, label_strings, scanvi
from .denoising import knn_smoothing, magic, mean_profile, scvi_denoise, unchanged
from .embedding import pca_embedding, scvi_embedding
from .imputation import reference_mean, shared_genes, spage_style
from .perturbation import (
    perturbation_additive,
    perturbation_linear,
    perturbation_no_change,
    perturbation_training_mean,
)

__all__ = [
    "mean_profile",
    "BaselineResult",
    "celltypist",
    "celltypist_style",
    "CLIP",
    "knn_on_pca",
    "knn_smoothing",
    "L1_CS",
    "l1_logistic_cv",
    "label_strings",
    "magic",
    "pca_embedding",
    "perturbation_additive",
    "perturbation_linear",
    "perturbation_no_change",
    "perturbation_training_mean",
    "reference_mean",
    "scanvi",
    "scvi_denoise",
    "scvi_embedding",
    "shared_genes",
    "spage_style",
    "TARGET_SUM",
    "unchanged",
]
