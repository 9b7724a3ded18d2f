"""How well an embedding removes batch effects and keeps cell types: the scib metrics (Luecken et al. 2022).

Computed here with scikit-learn, scipy and the Leiden sweep of :mod:`.clustering`, following the definitions of scib
and scib-metrics (which needs jax, so it is not a dependency). Each score lies in [0, 1], higher is better:

bio conservation
    ``nmi`` and ``ari``: of Leiden clusters against the cell types, at the resolution with the highest NMI (scib's
    choice, over this package's sweep 0.1-1.4 where scib sweeps 0.1-2.0); ``label_asw``: the cell-type silhouette,
    rescaled ``(s + 1) / 2``.
batch correction
    ``batch_asw``: within each cell type, ``1 - |s|`` of every cell's silhouette over the batches, averaged per
    type, then over types (a type seen in one batch only, or with no more cells than batches, is left out, as scib
    does); ``ilisi``: the median inverse Simpson index of the batches among each cell's neighbours (LISI, Korsunsky
    et al. 2019, perplexity 30 over 90 neighbours), as ``(median - 1) / (B - 1)``; ``graph_connectivity``: per cell
    type, the share of its cells in the largest connected piece of the kNN graph restricted to that type (the graph
    taken as undirected, as scib does; scib-metrics asks for strongly connected pieces of the directed graph, which
    can only score lower), averaged over types.

``bio_conservation`` and ``batch_correction`` are the means of their three scores and ``overall`` is
``0.6 * bio + 0.4 * batch``, scib's weights, unscaled (scib-metrics' ``Benchmarker`` can min-max scale each score
over the methods of a table, which makes a method's figure depend on the others'; not here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from ._common import _as_label_array
from .clustering import clustering_scores

#: LISI's perplexity and neighbours (scib-metrics: 90 neighbours, perplexity a third of them).
LISI_PERPLEXITY = 30
LISI_NEIGHBOURS = 90
BIO = ("nmi", "ari", "label_asw")
BATCH = ("batch_asw", "ilisi", "graph_connectivity")


@dataclass(frozen=True)
class IntegrationScores:
    """The six scib scores of one embedding and their aggregates (module docstring), with what was scored."""

    nmi: float
    ari: float
    label_asw: float
    batch_asw: float
    ilisi: float
    graph_connectivity: float
    bio_conservation: float
    batch_correction: float
    overall: float
    n_cells: int
    n_batches: int
    n_cell_types: int
    nmi_chosen_resolution: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def integration_scores(
    embedding: np.ndarray,
    labels: np.ndarray,
    batches: np.ndarray,
    *,
    n_neighbors: int = 15,
    seed: int = 0,
) -> IntegrationScores:
    """Score one embedding's integration of ``batches`` and conservation of ``labels`` (cell types).

    Parameters
    ----------
    embedding
        ``(n_cells, dims)``; rows with a NaN (cells a model left out) are left out, with their labels.
    labels, batches
        One per cell. Cells with a missing label are left out. At least two batches and two labels are needed.
    n_neighbors
        Neighbours of the kNN graph of the Leiden sweep and of graph connectivity (LISI uses its own 90).
    seed
        Leiden's seed.
    """
    from sklearn.metrics import silhouette_samples, silhouette_score

    x = np.asarray(embedding, dtype=np.float64)
    labels, batches = _as_label_array(labels, "labels"), _as_label_array(batches, "batches")
    if x.ndim != 2 or not len(x) == len(labels) == len(batches):
        raise ValueError(
            f"embedding, labels and batches need one row per cell each, got {x.shape}, {labels.shape}, {batches.shape}"
        )
    keep = np.isfinite(x).all(1) & ~pd.isna(labels) & ~pd.isna(batches)
    x, labels, batches = x[keep], labels[keep].astype(str), batches[keep].astype(str)
    n_batches, n_types = len(np.unique(batches)), len(np.unique(labels))
    if n_batches < 2:
        raise ValueError(f"integration scores need cells of at least 2 batches, got {n_batches}")
    if n_types < 2:
        raise ValueError(f"integration scores need at least 2 cell types, got {n_types}")
    if len(x) <= max(n_neighbors, 3):
        raise ValueError(f"integration scores need more than {max(n_neighbors, 3)} scored cells, got {len(x)}")

    clusters = clustering_scores(x, labels, n_neighbors=n_neighbors, seed=seed)
    label_asw = (silhouette_score(x, labels) + 1) / 2
    per_type = []
    for label in np.unique(labels):
        rows = labels == label
        n_here = len(np.unique(batches[rows]))
        if n_here < 2 or n_here >= rows.sum():
            continue  # as scib: a type seen in one batch has nothing to mix, and a silhouette needs 2..n-1 groups
        per_type.append(float(np.mean(1 - np.abs(silhouette_samples(x[rows], batches[rows])))))
    batch_asw = float(np.mean(per_type)) if per_type else float("nan")
    ilisi = _ilisi(x, batches)
    connectivity = _graph_connectivity(x, labels, n_neighbors)
    bio = float(np.mean([clusters.best_nmi, clusters.ari_at_nmi_choice, label_asw]))
    batch = float(np.nanmean([batch_asw, ilisi, connectivity]))
    return IntegrationScores(
        nmi=float(clusters.best_nmi),
        ari=float(clusters.ari_at_nmi_choice),
        label_asw=float(label_asw),
        batch_asw=batch_asw,
        ilisi=ilisi,
        graph_connectivity=connectivity,
        bio_conservation=bio,
        batch_correction=batch,
        overall=0.6 * bio + 0.4 * batch,
        n_cells=len(x),
        n_batches=n_batches,
        n_cell_types=n_types,
        nmi_chosen_resolution=float(clusters.nmi_chosen_resolution),
    )


def lisi(x: np.ndarray, groups: np.ndarray, *, perplexity: float = LISI_PERPLEXITY, k: int = LISI_NEIGHBOURS):
    """Each cell's local inverse Simpson index of ``groups``: 1 when its neighbourhood holds one group, up to the
    number of groups when they are evenly mixed. Gaussian weights over the ``k`` nearest neighbours, each cell's
    width set by bisection so that the weights' perplexity is ``perplexity`` (Korsunsky et al. 2019)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(x) - 1)
    perplexity = min(perplexity, k / 3)
    distances, neighbours = NearestNeighbors(n_neighbors=k).fit(x).kneighbors()
    target = np.log(perplexity)
    beta = np.ones(len(x))
    low, high = np.zeros(len(x)), np.full(len(x), np.inf)
    # Entropy of the normalised weights as a function of beta: H = log(sum w) + beta * sum(d w) / sum(w), with d
    # the distances shifted by the nearest one (the shift cancels in the normalised weights).
    shifted = distances - distances[:, :1]
    for _ in range(50):
        weights = np.exp(-shifted * beta[:, None])
        total = weights.sum(1)
        entropy = np.log(total) + beta * (shifted * weights).sum(1) / total
        too_wide = entropy > target  # too flat: narrow the kernel (larger beta)
        low = np.where(too_wide, beta, low)
        high = np.where(too_wide, high, beta)
        beta = np.where(np.isinf(high), beta * 2, (low + high) / 2)
    weights = np.exp(-shifted * beta[:, None])
    weights /= weights.sum(1, keepdims=True)
    codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1]
    shares = np.zeros((len(x), codes.max() + 1))
    np.add.at(shares, (np.repeat(np.arange(len(x)), k), codes[neighbours].ravel()), weights.ravel())
    return 1.0 / (shares**2).sum(1)


#: LISI is rounded to this many decimals before scaling: float rounding must not read as mixing.
ILISI_DECIMALS = 9


def _ilisi(x: np.ndarray, batches: np.ndarray) -> float:
    n_batches = len(np.unique(batches))
    # a neighbourhood of one batch has LISI 1 up to float rounding either way: rounded, it reads as exactly 1
    median = round(float(np.median(lisi(x, batches))), ILISI_DECIMALS)
    return float(np.clip((median - 1) / (n_batches - 1), 0.0, 1.0))


def _graph_connectivity(x: np.ndarray, labels: np.ndarray, n_neighbors: int) -> float:
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import kneighbors_graph

    graph = kneighbors_graph(x, n_neighbors=min(n_neighbors, len(x) - 1), include_self=False)
    shares = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        _, pieces = connected_components(graph[rows][:, rows], directed=False)
        shares.append(np.bincount(pieces).max() / len(rows))
    return float(np.mean(shares))
