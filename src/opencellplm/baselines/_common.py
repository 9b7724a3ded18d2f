"""What the baseline families share: the result type, reading counts, log-normalising, highly variable genes, and
the optional extras (scvi-tools, MAGIC)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._lognorm import log_normalize
from ..data.reader import check_readable, counts_matrix, iter_row_blocks, on_disk

logger = logging.getLogger(__name__)

#: Standardised values are clipped to ``[-CLIP, CLIP]`` (CellTypist and ``scanpy.pp.scale(max_value=10)``).
CLIP = 10.0


@dataclass(frozen=True, eq=False)
class BaselineResult:
    """What a baseline produced, and how long it took.

    Attributes
    ----------
    name
        The method, e.g. ``"pca"``, ``"celltypist_style"``.
    prediction
        Embeddings: ``(n_cells, n_dims)`` float array. Annotation: the predicted label of each test cell (an
        array of strings). Denoising: ``(n_cells, n_genes)`` on the count scale (dense float32, or sparse for
        :func:`unchanged` of sparse input).
    seconds
        Wall time of the whole call, preprocessing included.
    fit_seconds
        The part of ``seconds`` spent before predicting (reading the data and fitting), where a baseline has the
        two apart (the annotation baselines, Tangram, gimVI, GEARS); None for a method that is one call
        (embeddings, denoising, the perturbation means). :attr:`predict_seconds` is the rest.
    probabilities
        Annotation only: ``(n_test_cells, n_classes)`` class probabilities, columns in the order of ``classes``.
    classes
        Annotation only: the class names (the training labels, as strings).
    params
        The settings that were used (after any adjustment to the data, e.g. fewer components than asked).
    peak_mb
        How far the process's resident memory rose during the call (:class:`~opencellplm._memory.PeakMemory`),
        set by :func:`~opencellplm.baselines.registry.run_baseline`; None when the function is called directly.
    """

    name: str
    prediction: Any
    seconds: float
    probabilities: np.ndarray | None = None
    classes: tuple[str, ...] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    fit_seconds: float | None = None
    peak_mb: float | None = None

    @property
    def predict_seconds(self) -> float | None:
        """``seconds - fit_seconds`` where the fit is timed apart, else None."""
        return None if self.fit_seconds is None else max(self.seconds - self.fit_seconds, 0.0)

    def timing(self) -> tuple[float, float | None]:
        """``(fit seconds, predict seconds)`` for a task's table: a method timed as one call counts as fitting
        (``predict`` None), the convention of every task."""
        return (self.seconds, None) if self.fit_seconds is None else (self.fit_seconds, self.predict_seconds)


def install_hint(extra: str) -> str:
    """How to install an optional extra, from a registry and from a clone (where ``opencellplm[...]`` finds
    no package to add the extra to)."""
    return f"pip install 'opencellplm[{extra}]' (in a clone of the repository: pip install -e '.[{extra}]')"


@contextmanager
def root_logging_kept() -> Iterator[None]:
    """Put the root logger's handlers and level back as they were when the block ends.

    Some baseline packages set up the root logger (``celltypist`` calls ``basicConfig(level=INFO)`` when imported,
    ``tangram`` sets the root level to INFO and logs through ``logging.info``, which adds a handler), and would make
    every library's INFO records print, and this package's twice.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def package_version(distribution: str) -> str:
    """The installed version of a distribution (e.g. ``"cell-gears"``), or ``"unknown"``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


class BrokenPackage(RuntimeError):
    """An optional baseline package is installed but does not import (e.g. it needs another version of one of its
    dependencies): not a missing extra, a failure to report as such."""


def import_package(module: str, what: str, extra: str):
    """Import an optional baseline package (``what`` names the method): an ImportError naming ``extra`` when it is
    not installed, :class:`BrokenPackage` with the import's error when it is installed but does not import."""
    import importlib
    import importlib.util

    try:
        with root_logging_kept(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # their own imports of scanpy internals
            return importlib.import_module(module)
    except ImportError as err:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise ImportError(f"{what} needs the {extra} extra: {install_hint(extra)}") from err
        raise BrokenPackage(f"{what}'s package is installed but does not import: {type(err).__name__}: {err}") from err


def _import_scvi():
    try:
        import scvi
    except ImportError as err:
        raise ImportError(f"scVI needs the scvi extra: {install_hint('scvi')}") from err
    return scvi


def _import_magic():
    try:
        import magic as magic_module
    except ImportError as err:
        raise ImportError(f"MAGIC needs the magic extra: {install_hint('magic')}") from err
    if not hasattr(magic_module, "MAGIC"):  # python-magic (libmagic bindings) shares the import name
        raise ImportError(
            f"the module named 'magic' at {getattr(magic_module, '__file__', '?')} is not MAGIC (magic-impute); "
            f"MAGIC needs the magic extra: {install_hint('magic')}"
        )
    return magic_module


def _train_scvi(scvi, adata: AnnData, *, layer, batch_key, n_latent, max_epochs, seed):
    counts = _counts(adata, layer)
    obs = pd.DataFrame(index=adata.obs_names.copy())
    if batch_key is not None:
        if batch_key not in adata.obs:
            raise KeyError(f"batch_key {batch_key!r} is not an obs column; adata.obs has {list(adata.obs.columns)}")
        obs[batch_key] = adata.obs[batch_key].astype(str).to_numpy()
    work = AnnData(counts, obs=obs, var=pd.DataFrame(index=adata.var_names.copy()))
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(work, batch_key=batch_key)
    model = scvi.model.SCVI(work, n_latent=n_latent)
    logger.info("scvi: training on %d cells x %d genes (max_epochs=%s)", *counts.shape, max_epochs)
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    return model, np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()


def _counts(adata: AnnData, layer: str | None) -> sp.csr_matrix:
    """A float32 CSR copy of the counts (X or a layer; in memory or backed), checked non-negative."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"expected an AnnData, got {type(adata).__name__}")
    matrix = counts_matrix(adata, layer)
    where = "X" if layer is None else f"layers[{layer!r}]"
    check_readable(matrix, where)
    if on_disk(matrix):
        blocks = [block for _, block in iter_row_blocks(matrix, adata.n_obs, adata.n_vars)]
        counts = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix(adata.shape, dtype=np.float32)
    else:
        counts = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    if counts.nnz and (not np.all(np.isfinite(counts.data)) or counts.data.min() < 0):
        raise ValueError(f"{where} holds negative or non-finite values; the baselines need raw counts (pass layer=)")
    return counts


def _log_normalized(counts: sp.csr_matrix) -> sp.csr_matrix:
    """``log1p(counts / total * 1e4)`` per cell, as a new float32 CSR matrix (a cell without counts stays 0)."""
    return log_normalize(counts, dtype=np.float32)


def _highly_variable(log_x: sp.csr_matrix, n_top_genes: int) -> np.ndarray:
    """Column indices of the ``n_top_genes`` most variable genes (scanpy ``"seurat"``), all when there are no more."""
    import scanpy as sc

    if log_x.shape[1] <= n_top_genes:
        return np.arange(log_x.shape[1])
    work = AnnData(log_x.copy())
    sc.pp.highly_variable_genes(work, flavor="seurat", n_top_genes=n_top_genes)
    return np.flatnonzero(work.var["highly_variable"].to_numpy())


#: scvi-tools models read this many highly variable genes, as scvi-tools' tutorials prepare data (on every gene,
#: scVI's 400 epochs over 2,142 pancreas cells x 20,125 genes took 22 minutes on one CPU thread here).
SCVI_TOP_GENES = 2000


def _variable_columns(counts: sp.csr_matrix, n_top_genes: int | None) -> np.ndarray:
    """Columns of the ``n_top_genes`` most variable genes of these counts (all of them for None)."""
    if n_top_genes is None:
        return np.arange(counts.shape[1])
    return _highly_variable(_log_normalized(counts), n_top_genes)


def _n_comps(n_comps: int, shape: tuple[int, int]) -> int:
    n = min(n_comps, shape[0] - 1, shape[1] - 1)
    if n < 1:
        raise ValueError(f"a PCA of {shape[0]} cells x {shape[1]} genes is impossible; pass at least 2 of each")
    if n < n_comps:
        logger.info("%d principal components instead of %d: the data have %d cells x %d genes", n, n_comps, *shape)
    return n
