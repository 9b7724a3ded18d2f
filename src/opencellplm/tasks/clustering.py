"""Zero-shot clustering score of cell embeddings, with PCA (and scVI when installed) in the same table.

Every representation is scored the same way (:func:`opencellplm.metrics.clustering_scores`): a kNN graph,
Leiden over the resolution sweep of TASKS §2, ARI and NMI against known labels. Three figures per
representation, each mean and spread over Leiden seeds: the best over resolutions (the official protocol,
optimistic), a fixed resolution (label-free), and the resolution chosen by NMI with the ARI at that same
resolution.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ..baselines.registry import baselines_for, run_baseline
from ..data.validate import require_anndata
from ..metrics import clustering_scores

logger = logging.getLogger(__name__)

FIGURES = {
    "best_ari": "best ARI (best over resolutions)",
    "best_nmi": "best NMI (best over resolutions)",
    "ari_fixed": "ARI at fixed resolution",
    "nmi_fixed": "NMI at fixed resolution",
    "ari_at_nmi_choice": "ARI at the NMI-chosen resolution",
    "nmi_chosen_resolution": "NMI-chosen resolution",
}


@dataclass
class ClusteringResult:
    """Scores per representation: ``scores[name]`` lists one :class:`~opencellplm.metrics.ClusteringScores`
    per seed; ``seconds[name]`` the time to make the representation and ``peak_mb[name]`` how far memory rose
    meanwhile (baselines only: given embeddings were made elsewhere); ``skipped`` optional baselines that could
    not run, with the reason."""

    scores: dict[str, list[Any]]
    seconds: dict[str, float | None]
    skipped: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    peak_mb: dict[str, float | None] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per representation: each figure's mean and standard deviation over seeds."""
        rows = {}
        for name, per_seed in self.scores.items():
            row = {}
            for key, label in FIGURES.items():
                values = [getattr(s, key) for s in per_seed]
                row[f"{label} mean"] = float(np.mean(values))
                row[f"{label} sd"] = float(np.std(values))
            row["seconds"] = self.seconds.get(name)
            rows[name] = row
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("representation")

    def to_markdown(self) -> str:
        """The table of means ± sd, for reports."""
        lines = ["| representation | " + " | ".join(FIGURES.values()) + " |", "|---" * (len(FIGURES) + 1) + "|"]
        for name, per_seed in self.scores.items():
            cells = []
            for key in FIGURES:
                values = [getattr(s, key) for s in per_seed]
                cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": {name: [s.to_dict() for s in per_seed] for name, per_seed in self.scores.items()},
            "seconds": self.seconds,
            "skipped": self.skipped,
            "settings": self.settings,
            "peak_mb": self.peak_mb,
        }


def score_clustering(
    adata: AnnData,
    labels_key: str,
    *,
    embeddings: dict[str, np.ndarray] | None = None,
    embedding_key: str | None = "X_cellplm",
    layer: str | None = None,
    baselines_run: tuple[str, ...] = ("pca", "scvi"),
    seeds: tuple[int, ...] = (0, 1, 2),
    fixed_resolution: float = 1.0,
    n_neighbors: int = 15,
) -> ClusteringResult:
    """Score embeddings of ``adata`` by Leiden clustering against ``obs[labels_key]``, beside the baselines.

    Parameters
    ----------
    adata
        Cells with labels, the counts in ``X`` or ``layers[layer]`` (for the baselines).
    labels_key
        ``obs`` column of the known labels.
    embeddings
        Named representations to score (rows in ``obs_names`` order; NaN rows, cells a model left out, are
        excluded and counted).
    embedding_key
        Also score ``obsm[embedding_key]`` when present (default ``X_cellplm``, what ``embed`` writes).
    baselines_run
        ``"pca"`` (log-normalised highly variable genes, 50 components) and ``"scvi"`` (the ``scvi``
        extra; skipped, saying so, when absent).
    seeds
        Leiden seeds; each figure is reported as mean and spread over them.
    """
    require_anndata(adata)
    if labels_key not in adata.obs:
        raise KeyError(f"obs column {labels_key!r} not found; adata.obs has {list(adata.obs.columns)}")
    chosen = baselines_for("clustering", baselines_run)
    representations: dict[str, np.ndarray] = dict(embeddings or {})
    if embedding_key is not None and embedding_key in adata.obsm:
        representations.setdefault(embedding_key, np.asarray(adata.obsm[embedding_key]))
    seconds: dict[str, float | None] = {name: None for name in representations}
    peak_mb: dict[str, float | None] = {name: None for name in representations}
    skipped: dict[str, str] = {}
    for name, baseline in chosen.items():
        result, why = run_baseline(baseline, adata, layer=layer, seed=0)  # the seeds are Leiden's, not the embeddings'
        if why is not None:
            skipped[name] = why
            logger.warning("skipped %s: %s", name, why)
            continue
        representations[name] = result.prediction
        seconds[name] = round(result.seconds, 2)
        peak_mb[name] = result.peak_mb
    if not representations:
        raise ValueError(f"nothing to score: no embeddings given and no obsm[{embedding_key!r}]; embed first")
    labels = adata.obs[labels_key].to_numpy()
    scores = {}
    for name, representation in representations.items():
        started = time.perf_counter()
        scores[name] = [
            clustering_scores(
                representation, labels, fixed_resolution=fixed_resolution, n_neighbors=n_neighbors, seed=seed
            )
            for seed in seeds
        ]
        logger.info("scored %s in %.1f s", name, time.perf_counter() - started)
    settings = {
        "labels_key": labels_key,
        "seeds": list(seeds),
        "fixed_resolution": fixed_resolution,
        "n_neighbors": n_neighbors,
        "n_cells": adata.n_obs,
    }
    return ClusteringResult(scores, seconds, skipped, settings, peak_mb)
