"""Scores for the downstream tasks: numpy (or scipy sparse) in, floats and small frozen dataclasses out.

- :func:`clustering_scores`: kNN graph + Leiden sweep on an embedding, ARI and NMI against labels (TASKS §2);
- :func:`classification_scores`: macro F1, macro precision, accuracy, confusion matrix (TASKS §4);
- :func:`hide_counts` and :func:`denoising_scores`: the paper's denoising protocol (TASKS §3);
- :func:`molecular_split` and :func:`mcv_scores`: molecular cross-validation (Batson et al. 2019, OpenProblems);
- spatial imputation (TASKS §5, module :mod:`.imputation`): :func:`zero_rates`, :func:`held_out_gene_folds`,
  :func:`imputation_scores`.
- :func:`condition_means`, :func:`top_de_genes` and :func:`perturbation_scores`: perturbation prediction on mean
  log-normalised profiles (TASKS §6; :mod:`opencellplm.metrics.perturbation`).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

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

logger = logging.getLogger(__name__)

#: The official CellPLM sweep: Leiden resolutions 0.1, 0.2, ..., 1.4.
DEFAULT_RESOLUTIONS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 15))
#: Counts per cell after normalisation in the denoising scores.
TARGET_SUM = 1e4
#: Added inside the logarithm of the Poisson loss (as in Batson et al.'s ``poisson_nll_loss``).
POISSON_EPS = 1e-6
#: Rows made dense at once by :func:`mcv_scores`.
BLOCK_ROWS = 2048


# ---------------------------------------------------------------------------------------------------------------
# clustering


@dataclass(frozen=True)
class ClusteringScores:
    """ARI and NMI of Leiden clusterings of an embedding against known labels, over a resolution sweep.

    Attributes
    ----------
    best_ari, best_nmi
        Best over resolutions: the highest ARI and the highest NMI, each taken independently over the sweep
        (the official CellPLM protocol). Optimistic: the two may come from different resolutions, and the
        resolution is chosen with the labels.
    ari_fixed, nmi_fixed
        ARI and NMI at ``fixed_resolution``, a label-free choice.
    fixed_resolution
        The fixed resolution (part of the sweep).
    nmi_chosen_resolution, ari_at_nmi_choice
        The resolution with the highest NMI (the smallest one on ties) and the ARI at that same resolution,
        as scib and Kedzierska et al. report.
    resolutions
        The sweep, ascending.
    ari, nmi, n_clusters
        Per resolution (keys: the resolutions).
    n_cells
        Cells scored.
    n_missing_embedding, n_missing_label
        Cells left out because their embedding row has a NaN (cells the model did not embed) or their label
        is missing; a cell missing both counts in both.
    n_neighbors, seed
        Settings of the kNN graph and of Leiden.
    """

    best_ari: float
    best_nmi: float
    ari_fixed: float
    nmi_fixed: float
    fixed_resolution: float
    nmi_chosen_resolution: float
    ari_at_nmi_choice: float
    resolutions: tuple[float, ...]
    ari: dict[float, float]
    nmi: dict[float, float]
    n_clusters: dict[float, int]
    n_cells: int
    n_missing_embedding: int
    n_missing_label: int
    n_neighbors: int
    seed: int

    def table(self) -> pd.DataFrame:
        """One row per resolution: ``n_clusters``, ``ari``, ``nmi``."""
        return pd.DataFrame(
            {
                "n_clusters": [self.n_clusters[r] for r in self.resolutions],
                "ari": [self.ari[r] for r in self.resolutions],
                "nmi": [self.nmi[r] for r in self.resolutions],
            },
            index=pd.Index(self.resolutions, name="resolution"),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary; each figure says how its resolution was chosen."""
        return {
            "best_over_resolutions": {
                "ari": self.best_ari,
                "nmi": self.best_nmi,
                "note": "best ARI and best NMI each taken independently over the resolution sweep "
                "(official CellPLM protocol; optimistic)",
            },
            "fixed_resolution": {"resolution": self.fixed_resolution, "ari": self.ari_fixed, "nmi": self.nmi_fixed},
            "nmi_chosen_resolution": {
                "resolution": self.nmi_chosen_resolution,
                "ari": self.ari_at_nmi_choice,
                "nmi": self.best_nmi,
            },
            "per_resolution": [
                {"resolution": r, "n_clusters": self.n_clusters[r], "ari": self.ari[r], "nmi": self.nmi[r]}
                for r in self.resolutions
            ],
            "n_cells": self.n_cells,
            "n_missing_embedding": self.n_missing_embedding,
            "n_missing_label": self.n_missing_label,
            "n_neighbors": self.n_neighbors,
            "seed": self.seed,
        }


def clustering_scores(
    embedding: np.ndarray,
    labels: Sequence | np.ndarray | pd.Series,
    *,
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    fixed_resolution: float = 1.0,
    n_neighbors: int = 15,
    seed: int = 0,
) -> ClusteringScores:
    """Cluster an embedding with Leiden at several resolutions and score each clustering against labels.

    The procedure is the official one (``CellEmbeddingPipeline.score``): a kNN graph of the embedding
    (``scanpy.pp.neighbors(use_rep=..., n_neighbors=n_neighbors)``, scanpy's defaults otherwise), then
    ``scanpy.tl.leiden(flavor="igraph", n_iterations=2, random_state=seed)`` at every resolution, each clustering
    scored with the adjusted Rand index and the normalised mutual information (arithmetic mean, scikit-learn's
    default). Besides the official "best over resolutions" figures it reports two honest ones: the scores at
    ``fixed_resolution`` and the ARI at the resolution chosen by NMI.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)``. Rows holding a NaN (cells the model left out) are excluded and counted.
    labels
        ``n_cells`` labels (any type; compared as strings). Missing ones (None, NaN) are excluded and counted.
    resolutions
        The Leiden sweep; ``fixed_resolution`` is added when absent.
    fixed_resolution
        The label-free resolution reported on its own.
    n_neighbors
        Neighbours in the kNN graph.
    seed
        ``random_state`` of the graph and of Leiden.

    Returns
    -------
    ClusteringScores

    Raises
    ------
    ValueError
        When shapes disagree, the embedding holds infinities, or after exclusions fewer than 2 label classes or
        fewer than ``n_neighbors + 1`` cells remain.
    """
    import scanpy as sc
    from anndata import AnnData
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    embedding = np.asarray(embedding, dtype=np.float64)
    if embedding.ndim != 2:
        raise ValueError(f"embedding must be 2-D (cells x dimensions), got shape {embedding.shape}")
    labels = _as_label_array(labels, "labels")
    if len(labels) != embedding.shape[0]:
        raise ValueError(f"embedding has {embedding.shape[0]} rows but labels has {len(labels)} entries")
    if np.isinf(embedding).any():
        raise ValueError(
            "embedding holds infinite values; NaN rows mark cells to leave out, infinities are not allowed"
        )
    if int(n_neighbors) != n_neighbors or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
    sweep = sorted({float(r) for r in resolutions} | {float(fixed_resolution)})
    if sweep[0] <= 0:
        raise ValueError(f"resolutions must be positive, got {sweep}")

    missing_embedding = np.isnan(embedding).any(axis=1)
    missing_label = pd.isna(labels)
    keep = ~(missing_embedding | missing_label)
    n_cells = int(keep.sum())
    if missing_embedding.any() or missing_label.any():
        logger.info(
            "clustering_scores: %d of %d cells left out (%d without embedding, %d without label)",
            embedding.shape[0] - n_cells,
            embedding.shape[0],
            int(missing_embedding.sum()),
            int(missing_label.sum()),
        )
    truth = labels[keep].astype(str)
    n_classes = len(np.unique(truth))
    if n_classes < 2:
        raise ValueError(
            f"labels hold {n_classes} class(es) among the {n_cells} scored cells; ARI and NMI need at least 2"
        )
    if n_cells < n_neighbors + 1:
        raise ValueError(
            f"{n_cells} scored cells are too few for a {n_neighbors}-nearest-neighbour graph; "
            f"pass n_neighbors < {n_cells} or score more cells"
        )

    view = AnnData(np.zeros((n_cells, 1), dtype=np.float32))
    view.obsm["rep"] = embedding[keep]
    sc.pp.neighbors(view, n_neighbors=int(n_neighbors), use_rep="rep", random_state=seed)
    ari: dict[float, float] = {}
    nmi: dict[float, float] = {}
    n_clusters: dict[float, int] = {}
    for resolution in sweep:
        sc.tl.leiden(
            view, resolution=resolution, flavor="igraph", n_iterations=2, random_state=seed, key_added="cluster"
        )
        clusters = view.obs["cluster"].to_numpy()
        ari[resolution] = float(adjusted_rand_score(truth, clusters))
        nmi[resolution] = float(normalized_mutual_info_score(truth, clusters))
        n_clusters[resolution] = int(len(np.unique(clusters)))
    chosen = max(sweep, key=lambda r: (nmi[r], -r))  # highest NMI, smallest resolution on ties
    logger.info(
        "clustering_scores: %d cells, %d classes, %d resolutions; best ARI %.3f, best NMI %.3f",
        n_cells,
        n_classes,
        len(sweep),
        max(ari.values()),
        max(nmi.values()),
    )
    return ClusteringScores(
        best_ari=max(ari.values()),
        best_nmi=max(nmi.values()),
        ari_fixed=ari[float(fixed_resolution)],
        nmi_fixed=nmi[float(fixed_resolution)],
        fixed_resolution=float(fixed_resolution),
        nmi_chosen_resolution=chosen,
        ari_at_nmi_choice=ari[chosen],
        resolutions=tuple(sweep),
        ari=ari,
        nmi=nmi,
        n_clusters=n_clusters,
        n_cells=n_cells,
        n_missing_embedding=int(missing_embedding.sum()),
        n_missing_label=int(missing_label.sum()),
        n_neighbors=int(n_neighbors),
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------------------------
# classification


@dataclass(frozen=True)
class ClassificationScores:
    """Cell type annotation scores.

    Attributes
    ----------
    macro_f1, macro_precision
        Unweighted means of the per-class F1 and precision over ``labels`` (a class never predicted has
        precision 0).
    accuracy
        Share of all cells predicted right.
    labels
        The classes averaged over, in order.
    per_class_f1
        F1 of each class of ``labels``.
    confusion
        Counts, rows the true labels, columns the predicted ones (``labels`` first, then any other label seen
        in ``y_true`` or ``y_pred``, sorted); index named ``"true"``, columns ``"predicted"``.
    n_cells
        Cells scored.
    n_predicted_outside_labels
        Cells whose predicted label is not among ``labels`` (by default: a label absent from ``y_true``); always
        wrong.
    predicted_outside_labels
        Those predicted labels, sorted.
    """

    macro_f1: float
    macro_precision: float
    accuracy: float
    labels: tuple[str, ...]
    per_class_f1: dict[str, float]
    confusion: pd.DataFrame = field(compare=False)
    n_cells: int
    n_predicted_outside_labels: int
    predicted_outside_labels: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (the confusion matrix as nested lists with its label names)."""
        out = {k: v for k, v in asdict(self).items() if k != "confusion"}
        out["labels"] = list(self.labels)
        out["predicted_outside_labels"] = list(self.predicted_outside_labels)
        out["confusion"] = {
            "true": [str(i) for i in self.confusion.index],
            "predicted": [str(c) for c in self.confusion.columns],
            "counts": self.confusion.to_numpy().tolist(),
        }
        return out


def classification_scores(
    y_true: Sequence | np.ndarray | pd.Series,
    y_pred: Sequence | np.ndarray | pd.Series,
    *,
    labels: Sequence[str] | None = None,
) -> ClassificationScores:
    """Macro F1, macro precision, accuracy and the confusion matrix of predicted cell type labels.

    Labels are compared as strings. The macro averages run over ``labels`` (default: the classes present in
    ``y_true``), so a label that only the predictions use lowers the recall (and F1) of the true classes of the
    cells it was given to, but adds no class of its own. scikit-learn's ``f1_score(average="macro")`` without
    ``labels`` averages over the union of both, adding an F1 of 0 per such label: pass
    ``labels=sorted(set(y_true) | set(y_pred))`` for that figure.

    Parameters
    ----------
    y_true, y_pred
        One label per cell. Missing values are refused.
    labels
        Classes to average over.

    Returns
    -------
    ClassificationScores
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    truth = _as_label_array(y_true, "y_true")
    pred = _as_label_array(y_pred, "y_pred")
    if len(truth) != len(pred):
        raise ValueError(f"y_true has {len(truth)} labels but y_pred has {len(pred)}")
    if len(truth) == 0:
        raise ValueError("no cells to score: y_true and y_pred are empty")
    for name, values in (("y_true", truth), ("y_pred", pred)):
        if pd.isna(values).any():
            raise ValueError(f"{name} has {int(pd.isna(values).sum())} missing labels; drop those cells first")
    truth, pred = truth.astype(str), pred.astype(str)
    classes = sorted(set(truth)) if labels is None else [str(c) for c in labels]
    if not classes:
        raise ValueError("labels is empty; pass the classes to average over")
    if len(set(classes)) != len(classes):
        raise ValueError("labels has repeated entries")
    known = set(classes)
    outside = sorted(set(pred) - known)
    n_outside = int(np.isin(pred, outside).sum())
    if n_outside:
        logger.info("classification_scores: %d cells predicted as labels outside the classes: %s", n_outside, outside)

    precision, _, f1, _ = precision_recall_fscore_support(truth, pred, labels=classes, average=None, zero_division=0)
    rows = classes + sorted(set(truth) - known)
    columns = classes + sorted((set(truth) | set(pred)) - known)
    every = list(dict.fromkeys(rows + columns))
    full = confusion_matrix(truth, pred, labels=every)
    position = {label: i for i, label in enumerate(every)}
    confusion = pd.DataFrame(
        full[np.ix_([position[r] for r in rows], [position[c] for c in columns])],
        index=pd.Index(rows, name="true"),
        columns=pd.Index(columns, name="predicted"),
    )
    return ClassificationScores(
        macro_f1=float(np.mean(f1)),
        macro_precision=float(np.mean(precision)),
        accuracy=float(np.mean(truth == pred)),
        labels=tuple(classes),
        per_class_f1={c: float(v) for c, v in zip(classes, f1)},
        confusion=confusion,
        n_cells=len(truth),
        n_predicted_outside_labels=n_outside,
        predicted_outside_labels=tuple(outside),
    )


# ---------------------------------------------------------------------------------------------------------------
# denoising: hidden counts


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
# denoising: molecular cross-validation


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


def _as_label_array(values, name: str) -> np.ndarray:
    array = np.asarray(pd.Series(values, dtype=object) if not isinstance(values, np.ndarray) else values, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one label per cell (1-D), got shape {array.shape}")
    return array


def _shape(matrix) -> tuple[int, int]:
    shape = matrix.shape if sp.issparse(matrix) else np.shape(matrix)
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D matrix (cells x genes), got shape {shape}")
    return tuple(shape)


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
    totals = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(values * scale[rows])


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
