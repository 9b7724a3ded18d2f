"""Denoising: the paper's hidden-counts protocol (TASKS §3) and molecular cross-validation (Batson et al. 2019,
OpenProblems)."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._lognorm import TARGET_SUM, size_factors
from ._common import _shape

logger = logging.getLogger(__name__)

#: Added inside the logarithm of the Poisson loss (as in Batson et al.'s ``poisson_nll_loss``).
POISSON_EPS = 1e-6
#: Rows made dense at once by :func:`mcv_scores`.
BLOCK_ROWS = 2048


# ---------------------------------------------------------------------------------------------------------------
# hidden counts


@dataclass(frozen=True)
class DenoisingScores:
    """Errors of a denoised matrix on the hidden entries, after normalising to 1e4 per cell and log1p.

    Attributes
    ----------
    rmse, mae
        Root mean squared and mean absolute error over the hidden entries.
    n_hidden
        Entries scored.
    pearson
        Pearson r between the normalised, log1p truth and prediction over the hidden entries (NaN when either is
        constant there).
    """

    rmse: float
    mae: float
    n_hidden: int
    pearson: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
        return asdict(self)


def hide_counts(counts, *, fraction: float = 0.1, seed: int = 0) -> tuple[Any, Any]:
    """Set a share of each cell's non-zero counts to 0, for the denoising protocol (paper, after scGNN).

    In each cell with ``k`` non-zero entries, ``h = round(fraction * k)`` of them (chosen uniformly at random)
    are hidden, with two bounds: at least 1 when ``k >= 2``, and at most ``k - 1``, so that every cell keeps a
    non-zero count (and a library size to normalise by). A cell with a single non-zero keeps it. Rounding is half
    up. The choice depends only on the non-zero pattern and the seed, so dense and sparse inputs give the same
    result.

    Parameters
    ----------
    counts
        ``(n_cells, n_genes)`` numpy array or scipy sparse matrix; never modified.
    fraction
        Share of each cell's non-zeros to hide, in (0, 1).
    seed
        Seed of the choice.

    Returns
    -------
    corrupted
        A copy of ``counts`` with the hidden entries set to 0: CSR for sparse input (explicit zeros removed), an
        array of the same dtype for dense input.
    hidden_mask
        Boolean, True where a count was hidden: CSR for sparse input, an array for dense input.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction!r}")
    is_sparse = sp.issparse(counts)
    if not is_sparse:
        counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must be 2-D (cells x genes), got shape {counts.shape}")
    pattern = sp.csr_matrix(counts, copy=True)
    pattern.eliminate_zeros()
    pattern.sort_indices()
    n_nonzero = np.diff(pattern.indptr)
    n_hide = np.floor(fraction * n_nonzero + 0.5).astype(np.int64)
    n_hide = np.where(n_nonzero >= 2, np.clip(n_hide, 1, n_nonzero - 1), 0)
    rows = np.repeat(np.arange(pattern.shape[0]), n_nonzero)
    keys = np.random.default_rng(seed).random(pattern.nnz)
    order = np.lexsort((keys, rows))  # by row, then by random key
    rank = np.empty(pattern.nnz, dtype=np.int64)
    rank[order] = np.arange(pattern.nnz) - np.repeat(pattern.indptr[:-1], n_nonzero)
    hidden = rank < n_hide[rows]
    mask = sp.csr_matrix(
        (np.ones(int(hidden.sum()), dtype=bool), pattern.indices[hidden], np.r_[0, np.cumsum(n_hide)]),
        shape=pattern.shape,
    )
    logger.info(
        "hide_counts: hid %d of %d non-zero counts (%.1f%%) in %d cells",
        int(hidden.sum()),
        pattern.nnz,
        100.0 * hidden.sum() / max(pattern.nnz, 1),
        pattern.shape[0],
    )
    if is_sparse:
        pattern.data[hidden] = 0
        pattern.eliminate_zeros()
        return pattern, mask
    corrupted = counts.copy()
    dense_mask = mask.toarray()
    corrupted[dense_mask] = 0
    return corrupted, dense_mask


def denoising_scores(truth_counts, predicted_counts, hidden_mask) -> DenoisingScores:
    """RMSE and MAE of a denoised matrix on the hidden entries only (the paper's protocol, TASKS §3).

    Truth and prediction are each normalised to ``TARGET_SUM`` (10,000) counts per cell using their own per-cell
    totals over all genes, then ``log1p``; the errors are taken over the entries where ``hidden_mask`` is True.
    A cell whose total is 0 stays 0.

    Parameters
    ----------
    truth_counts
        The uncorrupted counts, ``(n_cells, n_genes)``, dense or scipy sparse.
    predicted_counts
        The denoised matrix on the count scale (non-negative), same shape, dense or sparse.
    hidden_mask
        Boolean, same shape, dense or sparse: the entries hidden from the model (from :func:`hide_counts`).

    Returns
    -------
    DenoisingScores
    """
    shape = _shape(truth_counts)
    rows, cols = _mask_positions(hidden_mask, shape, "hidden_mask")
    if len(rows) == 0:
        raise ValueError("hidden_mask hides no entry; nothing to score")
    truth = _log_normalized_at(truth_counts, rows, cols, shape, "truth_counts")
    pred = _log_normalized_at(predicted_counts, rows, cols, shape, "predicted_counts")
    error = pred - truth
    constant = np.ptp(truth) == 0 or np.ptp(pred) == 0
    return DenoisingScores(
        rmse=float(np.sqrt(np.mean(error**2))),
        mae=float(np.mean(np.abs(error))),
        n_hidden=int(len(rows)),
        pearson=math.nan if constant else float(np.corrcoef(truth, pred)[0, 1]),
    )


# ---------------------------------------------------------------------------------------------------------------
# molecular cross-validation


@dataclass(frozen=True)
class MCVScores:
    """Molecular cross-validation scores of a denoised training part against the held-out part.

    Attributes
    ----------
    mse
        Batson et al.'s MSE on the log scale: ``mean((log1p(denoised * (1 - p) / p) - log1p(held_out))**2)``
        over all entries, ``p`` the training fraction (the denoised values rescaled to the held-out depth).
    mse_normalized
        OpenProblems' MSE: each matrix normalised to 1e4 counts per cell, ``log1p``, mean squared difference.
    poisson
        Poisson loss: ``mean(mu - held_out * log(mu + 1e-6))`` with ``mu = denoised * (1 - p) / p``
        (Batson et al.'s ``poisson_nll_loss``, without the ``log(k!)`` term).
    train_fraction
        ``p``.
    """

    mse: float
    mse_normalized: float
    poisson: float
    train_fraction: float

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
        return asdict(self)


def molecular_split(counts, *, fraction: float = 0.9, seed: int = 0) -> tuple[Any, Any]:
    """Split each count binomially into a training and a held-out part (molecular cross-validation).

    Each count ``x`` becomes ``train ~ Binomial(x, fraction)`` and ``held_out = x - train``, independently,
    so the two parts sum to the input and are (for Poisson counts) independent samples at depths ``fraction``
    and ``1 - fraction``.

    Parameters
    ----------
    counts
        Non-negative integer-valued counts, numpy array or scipy sparse; never modified.
    fraction
        Expected share of each count in the training part, in (0, 1).
    seed
        Seed of the split.

    Returns
    -------
    train, held_out
        Integer-valued matrices in the input's dtype: CSR (explicit zeros removed) for sparse input, arrays for
        dense input.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    if sp.issparse(counts):
        train = sp.csr_matrix(counts, copy=True)
        train.sort_indices()
        values = _integer_counts(train.data)
        held = train.copy()
        train.data = rng.binomial(values, fraction).astype(train.dtype)
        held.data = (values - train.data).astype(held.dtype)
        train.eliminate_zeros()
        held.eliminate_zeros()
        return train, held
    counts = np.asarray(counts)
    values = _integer_counts(counts)
    train = rng.binomial(values, fraction)
    return train.astype(counts.dtype), (values - train).astype(counts.dtype)


def mcv_scores(denoised, held_out_counts, *, train_fraction: float) -> MCVScores:
    """Molecular cross-validation scores (Batson et al. 2019; OpenProblems' denoising task).

    ``denoised`` is a method's output on the training part of :func:`molecular_split` (on the count scale of
    that part, depth ``p = train_fraction``); ``held_out_counts`` is the other part (depth ``1 - p``). The
    denoised values are rescaled to the held-out depth by ``(1 - p) / p``, then

    - ``mse = mean((log1p(denoised * (1 - p) / p) - log1p(held_out))**2)`` over all entries (Batson et al.);
    - ``mse_normalized``: both normalised to 1e4 per cell (each by its own totals), ``log1p``, mean squared
      difference (OpenProblems' current MSE, in which the rescaling cancels);
    - ``poisson = mean(mu - held_out * log(mu + 1e-6))`` with ``mu = denoised * (1 - p) / p`` (OpenProblems
      rescales by the ratio of the two parts' grand totals, whose expectation is ``(1 - p) / p``).

    Parameters
    ----------
    denoised
        Non-negative, ``(n_cells, n_genes)``, dense or sparse.
    held_out_counts
        Same shape, dense or sparse.
    train_fraction
        ``p``, the ``fraction`` given to :func:`molecular_split`.

    Returns
    -------
    MCVScores
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction!r}")
    shape = _shape(held_out_counts)
    if _shape(denoised) != shape:
        raise ValueError(f"denoised has shape {_shape(denoised)} but held_out_counts has shape {shape}")
    factor = (1.0 - train_fraction) / train_fraction
    denoised, held_out_counts = _row_sliceable(denoised), _row_sliceable(held_out_counts)
    squared = squared_normalized = poisson = 0.0
    for start in range(0, shape[0], BLOCK_ROWS):  # dense blocks of rows bound the memory
        stop = min(start + BLOCK_ROWS, shape[0])
        mu = _dense(denoised[start:stop], "denoised") * factor
        held = _dense(held_out_counts[start:stop], "held_out_counts")
        squared += float(np.sum((np.log1p(mu) - np.log1p(held)) ** 2))
        squared_normalized += float(np.sum((np.log1p(_normalize_rows(mu)) - np.log1p(_normalize_rows(held))) ** 2))
        poisson += float(np.sum(mu - held * np.log(mu + POISSON_EPS)))
    n_entries = shape[0] * shape[1]
    return MCVScores(
        mse=squared / n_entries,
        mse_normalized=squared_normalized / n_entries,
        poisson=poisson / n_entries,
        train_fraction=float(train_fraction),
    )


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _mask_positions(mask, shape, name: str) -> tuple[np.ndarray, np.ndarray]:
    if _shape(mask) != shape:
        raise ValueError(f"{name} has shape {_shape(mask)} but the counts have shape {shape}")
    if sp.issparse(mask):
        mask = sp.coo_matrix(mask)
        keep = mask.data.astype(bool)
        return mask.row[keep], mask.col[keep]
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"{name} must be boolean (True = hidden), got dtype {mask.dtype}")
    return np.nonzero(mask)


def _log_normalized_at(matrix, rows: np.ndarray, cols: np.ndarray, shape, name: str) -> np.ndarray:
    """``log1p(x / rowsum * TARGET_SUM)`` at the given entries, the row sums over all genes."""
    if _shape(matrix) != shape:
        raise ValueError(f"{name} has shape {_shape(matrix)} but expected {shape}")
    if sp.issparse(matrix):
        matrix = sp.csr_matrix(matrix)
        data = matrix.data
        values = np.asarray(matrix[rows, cols]).ravel().astype(np.float64)
    else:
        matrix = np.asarray(matrix)
        data = matrix
        values = matrix[rows, cols].astype(np.float64)
    _check_counts_like(data, name)
    return np.log1p(values * size_factors(matrix.sum(axis=1))[rows])


def _check_counts_like(values: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} holds NaN or infinite values")
    if np.any(values < 0):
        raise ValueError(f"{name} holds negative values; pass counts (clip a prediction with np.clip(x, 0, None))")


def _dense(matrix, name: str) -> np.ndarray:
    array = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    array = array.astype(np.float64)
    _check_counts_like(array, name)
    return array


def _row_sliceable(matrix):
    return sp.csr_matrix(matrix) if sp.issparse(matrix) else np.asarray(matrix)


def _normalize_rows(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix * TARGET_SUM, totals, out=np.zeros_like(matrix), where=totals > 0)


def _integer_counts(values: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rounded = np.rint(values)
    if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(rounded != values):
        raise ValueError("counts must be non-negative integers (raw counts, not normalised or log values)")
    return rounded.astype(np.int64)
