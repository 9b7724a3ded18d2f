"""Spatial imputation scores and the held-out gene protocol (TASKS §5).

- :func:`zero_rates` and :func:`held_out_gene_folds`: which measured genes to hide, stratified by zero rate in the
  bins of the official protocol ``[0, 0.75], (0.75, 0.9], (0.9, 0.95], (0.95, 1]``, seeded, in disjoint folds;
- :func:`imputation_scores`: per held-out gene, Pearson r, cosine similarity and RMSE of ``log1p`` values across
  cells, then averaged over genes.

The official CellPLM scoring (``CellPLM/utils/eval.py::imputation_eval``) differs in two ways that change its
numbers, and is not copied:

- its "RMSE" is wrong: at each gene it appends ``np.sqrt(mse)`` of the *whole list* of per-gene MSEs so far,
  then averages the concatenation of those arrays, a mean of square roots weighted towards the first genes. It is
  not the RMSE of anything. Here the RMSE of each gene is ``sqrt(mean((log1p(pred) - log1p(truth))**2))`` over the
  cells, averaged over genes;
- each gene is scored only on the rows ``torch.nonzero(true_labels, as_tuple=True)[0]``: the cells with any
  non-zero held-out gene, each repeated once per non-zero entry it has, so cells with many expressed held-out
  genes weigh more. Here every cell counts once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

#: Upper edges of the zero-rate bins of the official protocol: ``[0, 0.75], (0.75, 0.9], (0.9, 0.95], (0.95, 1]``.
ZERO_RATE_BINS: tuple[float, ...] = (0.75, 0.9, 0.95)


def zero_rates(counts) -> np.ndarray:
    """Share of cells in which each gene is 0.

    Parameters
    ----------
    counts
        ``(n_cells, n_genes)`` numpy array or scipy sparse matrix (explicitly stored zeros count as zeros).

    Returns
    -------
    numpy.ndarray
        ``(n_genes,)`` float64 in ``[0, 1]``.

    Raises
    ------
    ValueError
        When ``counts`` is not 2-D, has no cell, or holds NaN.
    """
    if sp.issparse(counts):
        matrix = sp.csc_matrix(counts)
        values = matrix.data
        columns = np.repeat(np.arange(matrix.shape[1]), np.diff(matrix.indptr))
    else:
        matrix = np.asarray(counts)
        if matrix.ndim != 2:
            raise ValueError(f"counts must be 2-D (cells x genes), got shape {matrix.shape}")
        values = matrix
    if np.isnan(values).any():
        raise ValueError("counts holds NaN values; a NaN is neither zero nor expressed")
    if matrix.shape[0] == 0:
        raise ValueError("counts has no cell (0 rows); zero rates need at least one")
    if sp.issparse(counts):
        nonzero = np.bincount(columns[values != 0], minlength=matrix.shape[1])
    else:
        nonzero = np.count_nonzero(matrix, axis=0)
    return 1.0 - np.asarray(nonzero, dtype=np.float64) / matrix.shape[0]


def zero_rate_bin(zero_rate, bins: Sequence[float] = ZERO_RATE_BINS) -> np.ndarray:
    """The bin of each zero rate: 0 for ``[0, bins[0]]``, ``i`` for ``(bins[i-1], bins[i]]``, ``len(bins)`` above.

    Parameters
    ----------
    zero_rate
        Zero rates in ``[0, 1]``, one per gene.
    bins
        Increasing upper edges strictly inside ``(0, 1)``.

    Returns
    -------
    numpy.ndarray
        int64 bin numbers.
    """
    rates = _check_zero_rate(zero_rate)
    edges = _check_bins(bins)
    return np.digitize(rates, edges, right=True).astype(np.int64)


def bin_labels(bins: Sequence[float] = ZERO_RATE_BINS) -> list[str]:
    """Readable names of the bins, e.g. ``['[0, 0.75]', '(0.75, 0.9]', '(0.9, 0.95]', '(0.95, 1]']``."""
    edges = _check_bins(bins)
    labels = [f"[0, {edges[0]:g}]"]
    labels += [f"({lo:g}, {hi:g}]" for lo, hi in zip(edges[:-1], edges[1:])]
    return labels + [f"({edges[-1]:g}, 1]"]


def held_out_gene_folds(
    zero_rate: np.ndarray,
    *,
    n_folds: int = 5,
    max_per_bin: int | None = 25,
    bins: Sequence[float] = ZERO_RATE_BINS,
    seed: int = 0,
) -> list[np.ndarray]:
    """Genes to hold out, in ``n_folds`` disjoint folds stratified by zero-rate bin.

    Within each bin (in bin order) the genes are shuffled with ``numpy.random.default_rng(seed)`` and dealt to the
    folds in turn, each fold taking at most ``max_per_bin`` genes of the bin; the turn carries over from one bin to
    the next, so fold sizes differ by at most one gene (a capped bin gives every fold the same number). A bin with
    fewer genes than folds leaves some folds without a gene of it. With ``max_per_bin=None`` every gene lands in
    exactly one fold: a stratified k-fold partition of the genes (Li et al. 2022 hold out each of 10 folds in turn).
    The official CellPLM protocol takes up to 25 genes per bin.

    Parameters
    ----------
    zero_rate
        Zero rate of each gene (from :func:`zero_rates` of the spatial data), in ``[0, 1]``.
    n_folds
        Folds, at least 2 and at most the number of genes.
    max_per_bin
        Genes of each bin per fold (at most); ``None`` for all.
    bins
        Upper edges of the bins (:data:`ZERO_RATE_BINS`).
    seed
        Seed of the shuffles.

    Returns
    -------
    list of numpy.ndarray
        ``n_folds`` sorted int64 arrays of indices into ``zero_rate``, pairwise disjoint, none empty.

    Raises
    ------
    ValueError
        When ``n_folds < 2``, there are fewer genes than folds, ``max_per_bin`` is not a positive integer or
        ``None``, the zero rates are not in ``[0, 1]``, or the bins are not increasing inside ``(0, 1)``.
    """
    if isinstance(n_folds, bool) or int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if max_per_bin is not None and (
        isinstance(max_per_bin, bool) or int(max_per_bin) != max_per_bin or max_per_bin < 1
    ):
        raise ValueError(f"max_per_bin must be a positive integer or None (all genes), got {max_per_bin!r}")
    n_folds = int(n_folds)
    cap = None if max_per_bin is None else int(max_per_bin)
    which = zero_rate_bin(zero_rate, bins)
    n_genes = len(which)
    if n_folds > n_genes:
        raise ValueError(f"n_folds={n_folds} folds need at least {n_folds} genes, but zero_rate has {n_genes}")
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(n_folds)]
    turn = 0
    for b in range(len(_check_bins(bins)) + 1):
        genes = rng.permutation(np.flatnonzero(which == b))
        if cap is not None:
            genes = genes[: n_folds * cap]
        for i, gene in enumerate(genes):
            folds[(turn + i) % n_folds].append(int(gene))
        turn = (turn + len(genes)) % n_folds
    out = [np.sort(np.asarray(fold, dtype=np.int64)) for fold in folds]
    counts = np.bincount(which, minlength=len(bins) + 1)
    logger.info(
        "held_out_gene_folds: %d folds of %s genes from %d genes (per bin %s, at most %s per bin and fold)",
        n_folds,
        sorted({len(f) for f in out}),
        n_genes,
        dict(zip(bin_labels(bins), counts.tolist())),
        max_per_bin,
    )
    return out


@dataclass(frozen=True)
class ImputationScores:
    """Scores of imputed genes against their measured values, per gene on ``log1p`` values, then averaged.

    Attributes
    ----------
    pearson
        Mean over genes of the Pearson r across cells; genes where it is undefined (a constant truth or
        prediction) are left out of the mean and counted in ``n_undefined_pearson``.
    cosine
        Mean over genes of the cosine similarity across cells; genes where it is undefined (truth or prediction 0
        in every cell) are left out and counted in ``n_undefined_cosine``.
    rmse
        Mean over genes of each gene's RMSE across cells, ``sqrt(mean((log1p(pred) - log1p(truth))**2))``.
    n_genes, n_cells
        Genes and cells scored.
    n_undefined_pearson
        Genes whose Pearson r is NaN.
    per_gene
        One row per gene (index: the gene names): ``pearson``, ``cosine``, ``rmse``, ``zero_rate`` (of the truth)
        and ``bin`` (its zero-rate bin, e.g. ``"(0.75, 0.9]"``).
    n_undefined_cosine
        Genes whose cosine similarity is NaN.
    """

    pearson: float
    cosine: float
    rmse: float
    n_genes: int
    n_cells: int
    n_undefined_pearson: int
    per_gene: pd.DataFrame = field(compare=False)
    n_undefined_cosine: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The scalar fields (``per_gene`` left out)."""
        return {
            "pearson": self.pearson,
            "cosine": self.cosine,
            "rmse": self.rmse,
            "n_genes": self.n_genes,
            "n_cells": self.n_cells,
            "n_undefined_pearson": self.n_undefined_pearson,
            "n_undefined_cosine": self.n_undefined_cosine,
        }

    def by_bin(self) -> pd.DataFrame:
        """Means of ``pearson``, ``cosine`` and ``rmse`` per zero-rate bin (NaN genes left out), with ``n_genes``."""
        table = self.per_gene.groupby("bin", observed=False)[["pearson", "cosine", "rmse"]].mean()
        table["n_genes"] = self.per_gene.groupby("bin", observed=False).size()
        return table


def imputation_scores(
    truth, predicted, *, genes: Sequence[str] | None = None, bins: Sequence[float] = ZERO_RATE_BINS
) -> ImputationScores:
    """Pearson r, cosine similarity and RMSE of each imputed gene across cells, on ``log1p`` values (TASKS §5).

    Per gene (column), with ``t = log1p(truth)`` and ``p = log1p(predicted)`` over the cells:

    - Pearson r of ``t`` and ``p``; NaN when either is constant (counted, left out of the mean);
    - cosine similarity ``t . p / (|t| |p|)``; NaN when either is 0 in every cell (counted, left out);
    - RMSE ``sqrt(mean((p - t)**2))``.

    The three are then averaged over genes. These are the paper's two metrics (Pearson and cosine on ``log1p``
    values) plus a real RMSE: the official code's "RMSE" is not one (see the module docstring).

    Parameters
    ----------
    truth
        Measured values of the held-out genes, ``(n_cells, n_genes)``, on the count scale (non-negative; dense,
        scipy sparse or a DataFrame).
    predicted
        Predicted values, same shape and scale (may be fractional).
    genes
        Names of the genes, the index of ``per_gene``; default the columns of a DataFrame ``truth``, else
        ``0 .. n_genes - 1``.
    bins
        Zero-rate bins of ``per_gene['bin']`` (:data:`ZERO_RATE_BINS`).

    Returns
    -------
    ImputationScores

    Raises
    ------
    ValueError
        When the shapes differ, there is no cell or gene, either holds negative, NaN or infinite values, or
        ``genes`` does not name each column once.
    """
    if genes is None and isinstance(truth, pd.DataFrame):
        genes = [str(g) for g in truth.columns]
    t = _dense_values(truth, "truth")
    p = _dense_values(predicted, "predicted")
    if t.shape != p.shape:
        raise ValueError(f"truth has shape {t.shape} but predicted has shape {p.shape}; pass the same cells and genes")
    n_cells, n_genes = t.shape
    if n_cells == 0 or n_genes == 0:
        raise ValueError(f"nothing to score: truth has shape {t.shape} (cells x genes)")
    if genes is None:
        index = pd.RangeIndex(n_genes, name="gene")
    else:
        names = [str(g) for g in genes]
        if len(names) != n_genes:
            raise ValueError(f"genes has {len(names)} names but truth has {n_genes} columns; pass one name per column")
        if len(set(names)) != len(names):
            raise ValueError("genes has repeated names; pass each gene once")
        index = pd.Index(names, name="gene")

    zero_rate = 1.0 - np.count_nonzero(t, axis=0) / n_cells
    t, p = np.log1p(t), np.log1p(p)
    rmse = np.sqrt(np.mean((p - t) ** 2, axis=0))
    constant = (np.ptp(t, axis=0) == 0) | (np.ptp(p, axis=0) == 0)
    tc, pc = t - t.mean(axis=0), p - p.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        pearson = (tc * pc).sum(axis=0) / np.sqrt((tc**2).sum(axis=0) * (pc**2).sum(axis=0))
        norms = np.linalg.norm(t, axis=0) * np.linalg.norm(p, axis=0)
        cosine = (t * p).sum(axis=0) / norms
    pearson = np.where(constant, np.nan, np.clip(pearson, -1.0, 1.0))
    cosine = np.where(norms > 0, np.clip(cosine, -1.0, 1.0), np.nan)
    labels = np.asarray(bin_labels(bins), dtype=object)
    per_gene = pd.DataFrame(
        {
            "pearson": pearson,
            "cosine": cosine,
            "rmse": rmse,
            "zero_rate": zero_rate,
            "bin": pd.Categorical(labels[zero_rate_bin(zero_rate, bins)], categories=list(labels), ordered=True),
        },
        index=index,
    )
    n_nan_pearson, n_nan_cosine = int(np.isnan(pearson).sum()), int(np.isnan(cosine).sum())
    if n_nan_pearson or n_nan_cosine:
        logger.info(
            "imputation_scores: %d of %d genes without a Pearson r (constant truth or prediction), %d without a "
            "cosine (all zero); left out of the means",
            n_nan_pearson,
            n_genes,
            n_nan_cosine,
        )
    return ImputationScores(
        pearson=_nanmean(pearson),
        cosine=_nanmean(cosine),
        rmse=float(np.mean(rmse)),
        n_genes=int(n_genes),
        n_cells=int(n_cells),
        n_undefined_pearson=n_nan_pearson,
        per_gene=per_gene,
        n_undefined_cosine=n_nan_cosine,
    )


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def _dense_values(matrix, name: str) -> np.ndarray:
    if sp.issparse(matrix):
        array = matrix.toarray()
    elif isinstance(matrix, pd.DataFrame):
        array = matrix.to_numpy()
    else:
        array = np.asarray(matrix)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (cells x genes), got shape {array.shape}")
    try:
        array = array.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}") from err
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite values ({int((~np.isfinite(array)).sum())} entries)")
    if np.any(array < 0):
        raise ValueError(
            f"{name} holds negative values ({int((array < 0).sum())} entries); pass values on the count scale "
            "(clip a prediction with np.clip(x, 0, None))"
        )
    return array


def _check_zero_rate(zero_rate) -> np.ndarray:
    rates = np.asarray(zero_rate, dtype=np.float64)
    if rates.ndim != 1:
        raise ValueError(f"zero_rate must be 1-D (one rate per gene), got shape {rates.shape}")
    if not np.all(np.isfinite(rates)) or np.any(rates < 0) or np.any(rates > 1):
        raise ValueError("zero_rate must hold shares in [0, 1] (from zero_rates(counts)); got values outside")
    return rates


def _check_bins(bins: Sequence[float]) -> np.ndarray:
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or len(edges) == 0:
        raise ValueError(f"bins must be a non-empty sequence of upper bin edges, got {bins!r}")
    if np.any(edges <= 0) or np.any(edges >= 1) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins must increase strictly inside (0, 1), got {tuple(edges.tolist())}")
    return edges
