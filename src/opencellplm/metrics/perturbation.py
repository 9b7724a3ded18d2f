"""Perturbation prediction scores (TASKS §6), on mean profiles of log-normalised expression.

Each cell's counts are normalised to ``TARGET_SUM`` (1e4) and ``log1p``; a condition's profile is the mean of
its cells' (:func:`condition_means`). The differentially expressed genes of a perturbation are the ``n_top`` genes
with the largest absolute Welch t statistic against the control cells (:func:`top_de_genes`, the statistic of
``scanpy.tl.rank_genes_groups(method="t-test", reference=control)``). :func:`perturbation_scores` compares
predicted and true mean profiles per perturbation: RMSE on all genes and on the top DE genes, Pearson correlation
of the change from the control on both, and the share of top DE genes moved in the right direction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._lognorm import log_normalize
from ..data.reader import check_readable, counts_matrix, iter_row_blocks

logger = logging.getLogger(__name__)

#: Rows made dense at once when summing squared deviations.
BLOCK_ROWS = 2048
#: The per-perturbation metrics, in column order.
METRICS: tuple[str, ...] = ("rmse", "rmse_top20", "pearson_delta", "pearson_delta_top20", "direction_accuracy_top20")
_SHOWN = 5


# ---------------------------------------------------------------------------------------------------------------
# condition means and DE genes


@dataclass
class _Moments:
    labels: list[str]
    n: np.ndarray  # (n_labels,)
    mean: np.ndarray  # (n_labels, n_genes)
    genes: pd.Index
    matrix: Any = field(repr=False)
    codes: np.ndarray = field(repr=False)

    def variance(self) -> np.ndarray:
        """Per-label variance (ddof=1) of every gene, by a second pass over the rows (squared deviations)."""
        squares = np.zeros_like(self.mean)
        n_rows = len(self.codes)
        for start, block in iter_row_blocks(self.matrix, n_rows, len(self.genes)):
            for offset in range(0, block.shape[0], BLOCK_ROWS):
                part = block[offset : offset + BLOCK_ROWS]
                codes = self.codes[start + offset : start + offset + part.shape[0]]
                deviation = _log_normalized(part).toarray() - self.mean[codes]
                squares += _indicator(codes, len(self.labels)) @ (deviation**2)
        with np.errstate(invalid="ignore", divide="ignore"):
            return squares / (self.n[:, None] - 1)


def _moments(adata_or_counts, labels, layer: str | None, genes: Sequence[str] | None) -> _Moments:
    if isinstance(adata_or_counts, AnnData):
        adata = adata_or_counts
        if isinstance(labels, str):
            if labels not in adata.obs:
                raise KeyError(f"labels {labels!r} is not an obs column; adata.obs has {list(adata.obs.columns)}")
            labels = adata.obs[labels]
        matrix = counts_matrix(adata, layer)
        gene_index = pd.Index(adata.var_names.astype(str))
    else:
        if layer is not None:
            raise ValueError("layer= applies to an AnnData; pass the counts matrix itself otherwise")
        matrix = adata_or_counts if sp.issparse(adata_or_counts) else np.asarray(adata_or_counts)
        if matrix.ndim != 2:
            raise ValueError(f"counts must be 2-D (cells x genes), got shape {matrix.shape}")
        gene_index = pd.Index(range(matrix.shape[1])) if genes is None else pd.Index([str(g) for g in genes])
        if len(gene_index) != matrix.shape[1]:
            raise ValueError(f"genes has {len(gene_index)} names but the counts have {matrix.shape[1]} columns")
    check_readable(matrix, "the counts")
    n_rows, n_cols = matrix.shape
    values = np.asarray(labels.tolist() if hasattr(labels, "tolist") else list(labels), dtype=object)
    if values.ndim != 1 or len(values) != n_rows:
        raise ValueError(f"labels must hold one label per cell ({n_rows}), got shape {values.shape}")
    missing = pd.isna(values)
    if missing.any():
        raise ValueError(f"labels has {int(missing.sum())} missing values; drop those cells or label them")
    names, codes = np.unique(values.astype(str), return_inverse=True)
    sums = np.zeros((len(names), n_cols))
    for start, block in iter_row_blocks(matrix, n_rows, n_cols):
        _check_counts(block)
        sums += (_indicator(codes[start : start + block.shape[0]], len(names)) @ _log_normalized(block)).toarray()
    n = np.bincount(codes, minlength=len(names)).astype(np.float64)
    return _Moments([str(name) for name in names], n, sums / n[:, None], gene_index, matrix, codes)


def _indicator(codes: np.ndarray, n_labels: int) -> sp.csr_matrix:
    """``(n_labels, n_rows)`` 0/1 matrix: row ``i`` sums the rows with code ``i``."""
    return sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_labels, len(codes)))


def _log_normalized(block: sp.csr_matrix) -> sp.csr_matrix:
    """``log1p(x / total * 1e4)`` per row, float64 CSR (a row without counts stays 0)."""
    return log_normalize(sp.csr_matrix(block, dtype=np.float64))


def _check_counts(block: sp.csr_matrix) -> None:
    if not np.all(np.isfinite(block.data)):
        raise ValueError("the counts hold NaN or infinite values")
    if block.data.size and block.data.min() < 0:
        raise ValueError("the counts hold negative values; pass raw counts (not log or scaled values)")


def condition_means(
    adata_or_counts, labels, *, layer: str | None = None, genes: Sequence[str] | None = None
) -> pd.DataFrame:
    """Mean log-normalised profile of each label.

    Each cell's counts are normalised to 1e4 (over all its genes) and ``log1p`` (a cell without counts stays 0),
    then averaged over the cells of each label.

    Parameters
    ----------
    adata_or_counts
        An AnnData with counts in ``X`` or ``layers[layer]`` (in memory or backed), or a counts matrix
        ``(n_cells, n_genes)``, numpy or scipy sparse.
    labels
        One label per cell (array, Series, list), or the name of an ``obs`` column of the AnnData. Compared as
        strings; missing labels are refused.
    layer
        Layer holding the counts (AnnData only); ``None`` for ``X``.
    genes
        Column names for a counts matrix (default ``0 .. n_genes - 1``); an AnnData's ``var_names`` are used.

    Returns
    -------
    pandas.DataFrame
        Index the labels (sorted), columns the genes, float64.

    Raises
    ------
    ValueError
        When the labels do not match the cells, are missing, or the counts are negative or not finite.
    """
    moments = _moments(adata_or_counts, labels, layer, genes)
    return pd.DataFrame(moments.mean, index=pd.Index(moments.labels, name="label"), columns=moments.genes)


def top_de_genes(
    adata,
    labels,
    *,
    control: str = "ctrl",
    n_top: int = 20,
    layer: str | None = None,
) -> dict[str, np.ndarray]:
    """The ``n_top`` most differentially expressed genes of each label against the control cells.

    On log-normalised values (as :func:`condition_means`), a Welch t statistic per gene,
    ``(mean_label - mean_control) / sqrt(var_label / n_label + var_control / n_control)`` with ``ddof=1``
    variances (the statistic of ``scanpy.tl.rank_genes_groups(method="t-test", reference=control)``); genes with
    zero variance in both groups get score 0. Genes are ranked by the absolute score, larger first, ties by column
    order.

    Parameters
    ----------
    adata
        AnnData or counts matrix, as in :func:`condition_means`.
    labels
        One label per cell, or an ``obs`` column name.
    control
        Label of the control cells.
    n_top
        Genes per label (all genes when there are fewer).
    layer
        Layer holding the counts (AnnData only).

    Returns
    -------
    dict of str to numpy.ndarray
        Each non-control label -> ``n_top`` column indices (int64, into the genes of ``adata``), most
        differentially expressed first.

    Raises
    ------
    ValueError
        When ``control`` is not among the labels, or the control or a label has fewer than 2 cells (no variance).
    """
    if int(n_top) != n_top or n_top < 1:
        raise ValueError(f"n_top must be a positive integer, got {n_top!r}")
    moments = _moments(adata, labels, layer, None)
    if control not in moments.labels:
        raise ValueError(f"control label {control!r} not found among the labels {moments.labels[:_SHOWN]}...")
    few = [f"{label} ({int(n)})" for label, n in zip(moments.labels, moments.n) if n < 2]
    if few:
        raise ValueError(f"a t-test needs at least 2 cells per label; too few cells: {few[:_SHOWN]}")
    variance = moments.variance()
    c = moments.labels.index(control)
    k = min(int(n_top), len(moments.genes))
    out: dict[str, np.ndarray] = {}
    for i, label in enumerate(moments.labels):
        if i == c:
            continue
        difference = moments.mean[i] - moments.mean[c]
        se = np.sqrt(variance[i] / moments.n[i] + variance[c] / moments.n[c])
        score = np.divide(difference, se, out=np.zeros_like(difference), where=se > 0)
        out[label] = np.argsort(-np.abs(score), kind="stable")[:k].astype(np.int64)
    return out


# ---------------------------------------------------------------------------------------------------------------
# scores


@dataclass(frozen=True)
class PerturbationScores:
    """Per-perturbation scores of predicted mean profiles.

    Attributes
    ----------
    per_perturbation
        Index the labels; columns ``rmse``, ``rmse_top20``, ``pearson_delta``, ``pearson_delta_top20``,
        ``direction_accuracy_top20`` (``top20``: the genes given in ``top_de``, 20 by default), ``n_top`` and, when
        groups were given, ``group``. ``pearson_delta*`` is NaN where the predicted or the true change is constant
        over the genes (e.g. a "no change" prediction).
    """

    per_perturbation: pd.DataFrame

    def summary(self, by: str | None = "group") -> pd.DataFrame:
        """Mean, standard deviation and count of each metric per group, plus an ``"all"`` row.

        Parameters
        ----------
        by
            Column to group by (default ``"group"``); ``None``, or the default when no groups were given, for the
            ``"all"`` row only.

        Returns
        -------
        pandas.DataFrame
            Index the groups (sorted) then ``"all"``; columns a MultiIndex ``(metric, stat)`` with stat ``mean``,
            ``std``, ``count`` (count excludes NaN, e.g. undefined Pearson correlations).
        """
        table = self.per_perturbation
        if by is not None and by not in table:
            if by != "group":
                raise KeyError(f"no column {by!r} to group by; columns: {list(table.columns)}")
            by = None
        metrics = table[list(METRICS)]
        overall = metrics.agg(["mean", "std", "count"]).unstack().to_frame("all").T
        if by is None:
            return overall
        per_group = metrics.groupby(table[by].to_numpy()).agg(["mean", "std", "count"])
        return pd.concat([per_group.sort_index(), overall])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per-perturbation rows and the summary (NaN as None)."""
        rows = self.per_perturbation.astype(object).where(self.per_perturbation.notna(), None)
        summary = self.summary()
        return {
            "per_perturbation": {str(k): v for k, v in rows.to_dict(orient="index").items()},
            "summary": {
                str(group): {f"{m}_{s}": (None if pd.isna(v) else float(v)) for (m, s), v in row.items()}
                for group, row in summary.iterrows()
            },
        }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denominator) if denominator > 0 else float("nan")


def perturbation_scores(
    predicted: pd.DataFrame,
    truth: pd.DataFrame,
    control: pd.Series | np.ndarray,
    top_de: Mapping[str, np.ndarray],
    *,
    groups: Mapping[str, str] | None = None,
) -> PerturbationScores:
    """Score predicted mean profiles against the true ones, per perturbation.

    For each label of ``truth``, with ``d_pred = predicted - control`` and ``d_true = truth - control``:

    - ``rmse``: root mean squared error of the profiles over all genes; ``rmse_top20`` over the label's top DE genes;
    - ``pearson_delta``: Pearson correlation of ``d_pred`` and ``d_true`` over all genes; ``pearson_delta_top20``
      over the top DE genes. NaN where either change is constant over those genes: a "no change" prediction
      (``predicted == control``) has no correlation;
    - ``direction_accuracy_top20``: share of the top DE genes where ``sign(d_pred) == sign(d_true)``; a zero
      predicted change counts as wrong unless the true change is zero too.

    Parameters
    ----------
    predicted, truth
        Mean log-normalised profiles (:func:`condition_means`): index labels, columns genes. Both must hold the
        same labels and genes (any order; ``predicted`` is aligned to ``truth``).
    control
        The control mean profile: a Series indexed by the genes (it may hold more), or an array in the column order
        of ``truth``.
    top_de
        Label -> top DE genes (:func:`top_de_genes`): integer positions in the columns of ``truth``, or gene names.
        Every label of ``truth`` needs an entry (extra entries are ignored).
    groups
        Label -> group (e.g. :attr:`PerturbationSplit.groups`), written to a ``group`` column; every label needs one.

    Returns
    -------
    PerturbationScores

    Raises
    ------
    ValueError
        When labels or genes do not match (naming the missing ones), a label has no top DE genes or group, the
        top DE genes are out of range or unknown, or a profile holds NaN or infinite values.
    """
    for name, frame in (("predicted", predicted), ("truth", truth)):
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"{name} must be a DataFrame (index labels, columns genes), got {type(frame).__name__}")
        if not frame.index.is_unique or not frame.columns.is_unique:
            raise ValueError(f"{name} has repeated labels or genes")
    labels, genes = list(truth.index), list(truth.columns)
    _same("labels", "predicted", predicted.index, "truth", truth.index)
    _same("genes", "predicted", predicted.columns, "truth", truth.columns)
    pred = predicted.loc[labels, genes].to_numpy(dtype=np.float64)
    true = truth.to_numpy(dtype=np.float64)
    if isinstance(control, pd.Series):
        lacking = [gene for gene in genes if gene not in control.index]
        if lacking:
            raise ValueError(f"control lacks {len(lacking)} gene(s) of truth: {lacking[:_SHOWN]}")
        base = control.loc[genes].to_numpy(dtype=np.float64)
    else:
        base = np.asarray(control, dtype=np.float64).ravel()
        if base.shape != (len(genes),):
            raise ValueError(f"control has {base.size} values but truth has {len(genes)} genes")
    for name, values in (("predicted", pred), ("truth", true), ("control", base)):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{name} holds NaN or infinite values")
    missing = [label for label in labels if label not in top_de]
    if missing:
        raise ValueError(f"top_de lacks {len(missing)} label(s) of truth: {missing[:_SHOWN]}")
    if groups is not None:
        no_group = [label for label in labels if label not in groups]
        if no_group:
            raise ValueError(f"groups lacks {len(no_group)} label(s) of truth: {no_group[:_SHOWN]}")
    position = {gene: i for i, gene in enumerate(genes)}

    rows = []
    for i, label in enumerate(labels):
        top = _positions(top_de[label], position, len(genes), label)
        d_pred, d_true = pred[i] - base, true[i] - base
        error = pred[i] - true[i]
        rows.append(
            {
                "rmse": float(np.sqrt(np.mean(error**2))),
                "rmse_top20": float(np.sqrt(np.mean(error[top] ** 2))),
                "pearson_delta": _pearson(d_pred, d_true),
                "pearson_delta_top20": _pearson(d_pred[top], d_true[top]) if len(top) > 1 else float("nan"),
                "direction_accuracy_top20": float(np.mean(np.sign(d_pred[top]) == np.sign(d_true[top]))),
                "n_top": len(top),
            }
        )
    table = pd.DataFrame(rows, index=pd.Index(labels, name="label"))
    if groups is not None:
        table["group"] = [groups[label] for label in labels]
    undefined = int(table["pearson_delta"].isna().sum())
    if undefined:
        logger.info("perturbation_scores: Pearson delta undefined (constant change) for %d label(s)", undefined)
    return PerturbationScores(table)


def _same(what: str, a_name: str, a: pd.Index, b_name: str, b: pd.Index) -> None:
    only_a, only_b = sorted(set(a) - set(b), key=str), sorted(set(b) - set(a), key=str)
    if only_a or only_b:
        raise ValueError(
            f"{a_name} and {b_name} hold different {what}: missing from {a_name}: {only_b[:_SHOWN]} "
            f"({len(only_b)}), not in {b_name}: {only_a[:_SHOWN]} ({len(only_a)})"
        )


def _positions(top, position: Mapping, n_genes: int, label: str) -> np.ndarray:
    top = np.asarray(top)
    if top.ndim != 1 or len(top) == 0:
        raise ValueError(f"top_de[{label!r}] must be a non-empty 1-D list of genes, got shape {top.shape}")
    if np.issubdtype(top.dtype, np.integer):
        if top.min() < 0 or top.max() >= n_genes:
            raise ValueError(f"top_de[{label!r}] holds positions outside 0..{n_genes - 1}")
        return top.astype(np.int64)
    unknown = [g for g in top.tolist() if g not in position]
    if unknown:
        raise ValueError(f"top_de[{label!r}] names genes not in truth: {unknown[:_SHOWN]}")
    return np.array([position[g] for g in top.tolist()], dtype=np.int64)
