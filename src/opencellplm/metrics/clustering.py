"""Clustering an embedding: a kNN graph and a Leiden sweep, ARI and NMI against labels (TASKS §2)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ._common import _as_label_array

logger = logging.getLogger(__name__)

#: The official CellPLM sweep: Leiden resolutions 0.1, 0.2, ..., 1.4.
DEFAULT_RESOLUTIONS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 15))


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
