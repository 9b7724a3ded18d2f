"""Batch-effect removal baselines: embeddings of cells from several batches, each a package at its defaults.

Every function takes ``(adata, *, batch_key, layer, seed)`` and returns an embedding (cells x dims) in
``adata``'s row order: PCA without correction (:func:`~opencellplm.baselines.pca_embedding`, the reference
every method should beat on batch mixing), scVI given the batch, Harmony on that PCA and Scanorama.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings

import numpy as np
import pandas as pd
from anndata import AnnData

from ._common import (
    SCVI_TOP_GENES,
    BaselineResult,
    _counts,
    _highly_variable,
    _log_normalized,
    import_package,
    package_version,
    root_logging_kept,
)
from .embedding import pca_embedding, scvi_embedding

logger = logging.getLogger(__name__)


def batches_of(adata: AnnData, batch_key: str) -> np.ndarray:
    """``obs[batch_key]`` as strings, checked: the column exists, no cell lacks a batch, and there are two or more
    (one batch leaves nothing to integrate)."""
    if not isinstance(batch_key, str) or batch_key not in adata.obs:
        raise KeyError(f"batch_key {batch_key!r} is not an obs column; adata.obs has {list(adata.obs.columns)}")
    column = adata.obs[batch_key]
    if column.isna().any():
        raise ValueError(f"{int(column.isna().sum())} cells have no batch in obs[{batch_key!r}]; give every cell one")
    batches = column.astype(str).to_numpy()
    found = np.unique(batches)
    if len(found) < 2:
        raise ValueError(f"obs[{batch_key!r}] holds one batch ({found[0]!r}): integration needs two or more")
    return batches


def pca_uncorrected(adata: AnnData, *, batch_key: str, layer: str | None = None, seed: int = 0) -> BaselineResult:
    """The standard PCA of all cells together (:func:`~opencellplm.baselines.pca_embedding`), batches ignored."""
    batches_of(adata, batch_key)
    return pca_embedding(adata, layer=layer, seed=seed)


def scvi_integrated(
    adata: AnnData, *, batch_key: str, layer: str | None = None, seed: int = 0, n_top_genes: int = SCVI_TOP_GENES
) -> BaselineResult:
    """scVI's latent means trained with the batch as its batch covariate (scvi-tools' defaults; extra ``scvi``), on
    the ``n_top_genes`` most variable genes (:func:`~opencellplm.baselines.scvi_embedding`)."""
    batches_of(adata, batch_key)
    return scvi_embedding(adata, layer=layer, batch_key=batch_key, seed=seed, n_top_genes=n_top_genes)


def harmony(adata: AnnData, *, batch_key: str, layer: str | None = None, seed: int = 0) -> BaselineResult:
    """Harmony (harmonypy, extra ``baselines``; Korsunsky et al. 2019) at its defaults, on the uncorrected PCA
    (:func:`pca_uncorrected`, 50 components), as scanpy's ``harmony_integrate``; ``seed`` is its
    ``random_state`` and the PCA's."""
    start = time.perf_counter()
    batches = batches_of(adata, batch_key)  # the input's faults first, whether or not the package is there
    pca = pca_embedding(adata, layer=layer, seed=seed).prediction.astype(np.float64)  # reads and checks the counts
    harmonypy = import_package("harmonypy", "Harmony", "baselines")
    meta = pd.DataFrame({"batch": batches})
    with root_logging_kept(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = harmonypy.run_harmony(pca, meta, "batch", random_state=seed, verbose=False)
    corrected = np.asarray(result.Z_corr, dtype=np.float32)
    if corrected.shape != pca.shape:  # harmonypy before 2.0 returns dims x cells
        corrected = corrected.T
    version = package_version("harmonypy")
    return BaselineResult(
        name="harmony",
        prediction=corrected,
        seconds=time.perf_counter() - start,
        params={"layer": layer, "package": f"harmonypy {version}", "n_comps": pca.shape[1], "seed": seed},
    )


def scanorama(
    adata: AnnData, *, batch_key: str, layer: str | None = None, seed: int = 0, n_top_genes: int = 2000
) -> BaselineResult:
    """Scanorama (extra ``baselines``; Hie et al. 2019) at its defaults (``integrate``: 100 dimensions, 20
    neighbours), given each batch's log-normalised counts over the ``n_top_genes`` highly variable genes of all
    cells, as its documentation prepares them; ``seed`` is its ``seed``."""
    start = time.perf_counter()
    batches = batches_of(adata, batch_key)
    log_x = _log_normalized(_counts(adata, layer))
    scanorama_module = import_package("scanorama", "Scanorama", "baselines")
    genes = _highly_variable(log_x, n_top_genes)
    log_x = log_x[:, genes]
    names = list(adata.var_names[genes].astype(str))
    order = list(dict.fromkeys(batches))  # batches in order of first appearance
    rows = [np.flatnonzero(batches == batch) for batch in order]
    # scanorama prints its progress even at verbose=0
    with root_logging_kept(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        integrated, _ = scanorama_module.integrate([log_x[r] for r in rows], [names] * len(rows), seed=seed, verbose=0)
    out = np.empty((adata.n_obs, integrated[0].shape[1]), dtype=np.float32)
    for r, block in zip(rows, integrated):
        out[r] = block
    version = package_version("scanorama")
    return BaselineResult(
        name="scanorama",
        prediction=out,
        seconds=time.perf_counter() - start,
        params={"layer": layer, "package": f"scanorama {version}", "n_top_genes": len(genes), "seed": seed},
    )
