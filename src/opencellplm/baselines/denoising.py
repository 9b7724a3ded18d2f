"""Denoising baselines, on the corrupted counts: :func:`unchanged`, :func:`mean_profile`, :func:`knn_smoothing`,
:func:`magic` (extra ``magic``), :func:`scvi_denoise` (extra ``scvi``)."""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from ..data.reader import counts_matrix, on_disk
from ._common import BaselineResult, _counts, _import_magic, _import_scvi, _log_normalized, _n_comps, _train_scvi

logger = logging.getLogger(__name__)


def unchanged(corrupted: AnnData, *, layer: str | None = None) -> BaselineResult:
    """The corrupted counts themselves as the prediction: what any denoiser must beat.

    Parameters
    ----------
    corrupted
        Counts in ``X`` or ``layers[layer]``; never modified.
    layer
        Layer holding the counts; ``None`` for ``X``.

    Returns
    -------
    BaselineResult
        ``prediction``: a copy of the counts (CSR float32 for sparse or backed input, a dense array otherwise).
    """
    start = time.perf_counter()
    matrix = counts_matrix(corrupted, layer)
    if on_disk(matrix) or sp.issparse(matrix):
        prediction = _counts(corrupted, layer)
    else:
        prediction = np.array(matrix, dtype=np.float32)
    logger.info("unchanged: %d cells x %d genes as they are", *prediction.shape)
    return BaselineResult(
        name="unchanged", prediction=prediction, seconds=time.perf_counter() - start, params={"layer": layer}
    )


def mean_profile(corrupted: AnnData, *, layer: str | None = None) -> BaselineResult:
    """Every cell gets the data set's mean expression profile at its own library size: what a decoder that ignores
    the cell predicts.

    The profile is the mean over cells of each cell's counts divided by its total (cells without counts left
    out); a cell's prediction is that profile times its total count.

    Parameters
    ----------
    corrupted
        Counts in ``X`` or ``layers[layer]``; never modified.
    layer
        Layer holding the counts; ``None`` for ``X``.

    Returns
    -------
    BaselineResult
        ``prediction``: ``(n_cells, n_genes)`` dense float32.
    """
    start = time.perf_counter()
    counts = _counts(corrupted, layer)
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    counted = totals > 0
    shares = sp.diags(np.divide(1.0, totals, out=np.zeros_like(totals), where=counted)) @ counts
    profile = np.asarray(shares.sum(axis=0), dtype=np.float64).ravel() / max(int(counted.sum()), 1)
    prediction = np.asarray(totals[:, None] * profile[None, :], dtype=np.float32)
    logger.info("mean_profile: %d cells x %d genes", *counts.shape)
    return BaselineResult(
        name="mean_profile", prediction=prediction, seconds=time.perf_counter() - start, params={"layer": layer}
    )


def knn_smoothing(
    corrupted: AnnData, *, layer: str | None = None, n_neighbors: int = 15, n_comps: int = 50, seed: int = 0
) -> BaselineResult:
    """Average each cell with its nearest neighbours in a PCA of log-normalised counts.

    Counts normalised to 1e4 per cell and ``log1p``; PCA of all genes (scanpy, ``arpack``, centred implicitly
    for sparse data, ``min(n_comps, n_cells - 1, n_genes - 1)`` components, ``random_state=seed``); Euclidean
    nearest neighbours in that space. Each cell's prediction is the mean of the expression profiles (counts
    divided by the cell's total) of itself and its ``n_neighbors - 1`` nearest other cells, multiplied by its
    own total count: on the count scale, at the cell's own library size. A cell without counts stays 0.

    Parameters
    ----------
    corrupted
        Counts in ``X`` or ``layers[layer]``; never modified.
    layer
        Layer holding the counts; ``None`` for ``X``.
    n_neighbors
        Cells averaged, the cell itself included (at most the number of cells).
    n_comps
        Principal components.
    seed
        Seed of the PCA solver.

    Returns
    -------
    BaselineResult
        ``prediction``: ``(n_cells, n_genes)`` dense float32.
    """
    import scanpy as sc
    from sklearn.neighbors import NearestNeighbors

    start = time.perf_counter()
    counts = _counts(corrupted, layer)
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    work = AnnData(_log_normalized(counts))
    n = _n_comps(n_comps, work.shape)
    sc.pp.pca(work, n_comps=n, svd_solver="arpack", random_state=seed)
    k = max(1, min(n_neighbors, counts.shape[0]))
    rows = np.arange(counts.shape[0])
    if k > 1:
        _, others = NearestNeighbors(n_neighbors=k - 1).fit(work.obsm["X_pca"]).kneighbors()  # self excluded
        neighbours = np.column_stack([rows, others])
    else:
        neighbours = rows[:, None]
    average = sp.csr_matrix(
        (np.full(neighbours.size, 1.0 / k), neighbours.ravel(), np.arange(0, neighbours.size + 1, k)),
        shape=(counts.shape[0], counts.shape[0]),
    )
    profiles = sp.diags(np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)) @ counts
    prediction = np.asarray((average @ profiles).toarray() * totals[:, None], dtype=np.float32)
    logger.info("knn_smoothing: %d cells x %d genes, %d components, %d neighbours", *counts.shape, n, k)
    return BaselineResult(
        name="knn_smoothing",
        prediction=prediction,
        seconds=time.perf_counter() - start,
        params={"layer": layer, "n_neighbors": k, "n_comps": n, "seed": seed},
    )


def magic(
    corrupted: AnnData,
    *,
    layer: str | None = None,
    knn: int = 5,
    t: int | str = "auto",
    n_pca: int = 100,
    seed: int = 0,
) -> BaselineResult:
    """MAGIC diffusion (van Dijk et al. 2018; needs the ``magic`` extra).

    As in OpenProblems: counts divided by each cell's total, square root, MAGIC (``knn``, ``t``, ``n_pca``,
    ``random_state=seed``), squared back, negative values set to 0, each cell rescaled to its own total count.

    Parameters
    ----------
    corrupted
        Counts in ``X`` or ``layers[layer]``; never modified.
    layer
        Layer holding the counts; ``None`` for ``X``.
    knn, t, n_pca
        MAGIC's settings.
    seed
        MAGIC's ``random_state``.

    Returns
    -------
    BaselineResult
        ``prediction``: ``(n_cells, n_genes)`` dense float32.

    Raises
    ------
    ImportError
        When magic-impute is not installed.
    """
    magic_module = _import_magic()
    start = time.perf_counter()
    counts = _counts(corrupted, layer)
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    profiles = sp.diags(np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)) @ counts
    operator = magic_module.MAGIC(knn=knn, t=t, n_pca=min(n_pca, min(counts.shape) - 1), random_state=seed, verbose=0)
    smoothed = np.asarray(operator.fit_transform(profiles.sqrt()), dtype=np.float64)
    smoothed = np.clip(smoothed, 0.0, None) ** 2
    sums = smoothed.sum(axis=1, keepdims=True)
    prediction = np.divide(smoothed * totals[:, None], sums, out=np.zeros_like(smoothed), where=sums > 0)
    logger.info("magic: %d cells x %d genes, knn=%d, t=%s", *counts.shape, knn, t)
    return BaselineResult(
        name="magic",
        prediction=prediction.astype(np.float32),
        seconds=time.perf_counter() - start,
        params={"layer": layer, "knn": knn, "t": t, "n_pca": n_pca, "seed": seed},
    )


def scvi_denoise(
    corrupted: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    n_latent: int = 10,
    max_epochs: int | None = None,
    seed: int = 0,
) -> BaselineResult:
    """scVI's expected expression, at each cell's observed library size (needs the ``scvi`` extra).

    scVI is trained on the corrupted counts; the prediction is its normalised expression
    (``get_normalized_expression(library_size=1)``, the NB mean proportions) times each cell's total count.

    Parameters
    ----------
    corrupted, layer, batch_key, n_latent, max_epochs, seed
        As in :func:`scvi_embedding`.

    Returns
    -------
    BaselineResult
        ``prediction``: ``(n_cells, n_genes)`` dense float32.

    Raises
    ------
    ImportError
        When scvi-tools is not installed.
    """
    scvi = _import_scvi()
    start = time.perf_counter()
    model, totals = _train_scvi(
        scvi, corrupted, layer=layer, batch_key=batch_key, n_latent=n_latent, max_epochs=max_epochs, seed=seed
    )
    proportions = np.asarray(model.get_normalized_expression(library_size=1.0, return_numpy=True), dtype=np.float64)
    return BaselineResult(
        name="scvi_denoise",
        prediction=(proportions * totals[:, None]).astype(np.float32),
        seconds=time.perf_counter() - start,
        params={"layer": layer, "batch_key": batch_key, "n_latent": n_latent, "max_epochs": max_epochs, "seed": seed},
    )
