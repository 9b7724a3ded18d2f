"""Embedding baselines for zero-shot clustering: :func:`pca_embedding`, :func:`scvi_embedding` (extra ``scvi``)."""

from __future__ import annotations

import logging
import time

import numpy as np
from anndata import AnnData

from ._common import (
    CLIP,
    SCVI_TOP_GENES,
    BaselineResult,
    _counts,
    _highly_variable,
    _import_scvi,
    _log_normalized,
    _n_comps,
    _train_scvi,
    _variable_columns,
)

logger = logging.getLogger(__name__)


def pca_embedding(
    adata: AnnData, *, layer: str | None = None, n_comps: int = 50, n_top_genes: int = 2000, seed: int = 0
) -> BaselineResult:
    """PCA of log-normalised highly variable genes: the standard scanpy embedding.

    Counts normalised to 1e4 per cell, ``log1p``, ``n_top_genes`` highly variable genes (scanpy's ``"seurat"``
    flavor on the log data; all genes when there are no more than ``n_top_genes``), each gene scaled to unit
    variance and clipped at 10, then PCA (``arpack``, ``random_state=seed``) with
    ``min(n_comps, n_cells - 1, n_genes - 1)`` components.

    Parameters
    ----------
    adata
        Counts in ``X`` or ``layers[layer]``; never modified.
    layer
        Layer holding the counts; ``None`` for ``X``.
    n_comps
        Principal components.
    n_top_genes
        Highly variable genes kept.
    seed
        Seed of the PCA solver.

    Returns
    -------
    BaselineResult
        ``prediction``: ``(n_cells, n_comps)`` float32.
    """
    import scanpy as sc

    start = time.perf_counter()
    log_x = _log_normalized(_counts(adata, layer))
    genes = _highly_variable(log_x, n_top_genes)
    work = AnnData(log_x[:, genes].toarray())
    sc.pp.scale(work, max_value=CLIP)
    n = _n_comps(n_comps, work.shape)
    sc.pp.pca(work, n_comps=n, svd_solver="arpack", random_state=seed)
    logger.info(
        "pca_embedding: %d cells, %d of %d genes (highly variable), %d components",
        adata.n_obs,
        len(genes),
        adata.n_vars,
        n,
    )
    return BaselineResult(
        name="pca",
        prediction=np.asarray(work.obsm["X_pca"], dtype=np.float32),
        seconds=time.perf_counter() - start,
        params={"layer": layer, "n_comps": n, "n_top_genes": len(genes), "seed": seed},
    )


def scvi_embedding(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    n_latent: int = 10,
    max_epochs: int | None = None,
    seed: int = 0,
    n_top_genes: int | None = SCVI_TOP_GENES,
) -> BaselineResult:
    """scVI's latent means (Lopez et al. 2018), trained on ``adata``'s counts of its ``n_top_genes`` most variable
    genes (scanpy's ``"seurat"`` flavor on log-normalised counts; None: every gene), as scvi-tools' tutorials
    prepare data (needs the ``scvi`` extra).

    Parameters
    ----------
    adata
        Counts in ``X`` or ``layers[layer]``; never modified.
    layer
        Layer holding the counts; ``None`` for ``X``.
    batch_key
        ``obs`` column of batches to correct for; ``None`` for none.
    n_latent
        Dimensions of the latent space.
    max_epochs
        Training epochs; ``None`` for scvi-tools' default (which depends on the number of cells).
    seed
        ``scvi.settings.seed``.

    Returns
    -------
    BaselineResult
        ``prediction``: ``(n_cells, n_latent)`` float32.

    Raises
    ------
    ImportError
        When scvi-tools is not installed.
    """
    start = time.perf_counter()
    genes = _variable_columns(_counts(adata, layer), n_top_genes)  # reads and checks the counts
    scvi = _import_scvi()
    model, _ = _train_scvi(
        scvi, adata[:, genes], layer=layer, batch_key=batch_key, n_latent=n_latent, max_epochs=max_epochs, seed=seed
    )
    latent = np.asarray(model.get_latent_representation(), dtype=np.float32)
    params = {"layer": layer, "batch_key": batch_key, "n_latent": n_latent, "max_epochs": max_epochs, "seed": seed}
    return BaselineResult(
        name="scvi",
        prediction=latent,
        seconds=time.perf_counter() - start,
        params=params | {"n_genes": len(genes)},
    )
