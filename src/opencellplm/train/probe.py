"""Choosing a pretraining checkpoint by what users get: a probe of the zero-shot embedding.

The masked-reconstruction loss on a few held-out sets moves noisily and says little about the embedding
users cluster. :class:`NeighbourhoodProbe` embeds fixed data sets with the model being trained and scores
a data set given with labels by how pure the embedding's neighbourhoods are
(:func:`~opencellplm.metrics.knn_label_agreement`), any other by how much of the standard PCA pipeline's cell
neighbourhoods it keeps (:func:`~opencellplm.metrics.neighbourhood_agreement`, no labels needed); pretraining
can keep the state where the chosen mean is best.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from anndata import AnnData
from torch import nn

PROBE_METRIC = "val_agreement"
LABEL_METRIC = "val_label_agreement"


@dataclass
class NeighbourhoodProbe:
    """Data sets whose zero-shot embedding is scored against their PCA at every evaluation.

    Build it with :meth:`from_adatas`. ``data[name]`` holds the cells (raw counts, ``var_names`` in the
    corpus's vocabulary) and the reference PCA (None for a labelled set); ``k`` neighbours are compared.
    ``labels[name]`` makes that data set scored by kNN label agreement instead of agreement with its PCA.
    ``select`` names the mean that picks the best state: ``"val_agreement"`` (over the unlabelled sets) or
    ``"val_label_agreement"`` (over the labelled ones).
    """

    data: dict[str, tuple[AnnData, np.ndarray | None]]
    k: int = 15
    max_cells: int = 4000
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    select: str = PROBE_METRIC
    _names: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("a neighbourhood probe needs at least one data set")
        unknown = sorted(set(self.labels) - set(self.data))
        if unknown:
            raise ValueError(f"labels given for data sets the probe does not have: {unknown}")
        for name, labels in self.labels.items():
            if len(labels) != self.data[name][0].n_obs:
                raise ValueError(f"{len(labels)} labels for the {self.data[name][0].n_obs} cells of {name!r}")
        if self.select not in (PROBE_METRIC, LABEL_METRIC):
            raise ValueError(f"select must be {PROBE_METRIC!r} or {LABEL_METRIC!r}, got {self.select!r}")
        if self.select == LABEL_METRIC and not self.labels:
            raise ValueError(f"select={LABEL_METRIC!r} needs labels for at least one data set")
        if self.select == PROBE_METRIC and not set(self.data) - set(self.labels):
            raise ValueError(f"select={PROBE_METRIC!r} needs at least one data set without labels")
        missing = [name for name, (_, reference) in self.data.items() if reference is None and name not in self.labels]
        if missing:
            raise ValueError(f"data sets with neither labels nor a reference PCA: {missing}")
        self._names = list(self.data)

    @classmethod
    def from_adatas(
        cls,
        adatas: Mapping[str, AnnData],
        *,
        k: int = 15,
        seed: int = 0,
        labels_key: str | None = None,
        select: str = PROBE_METRIC,
    ) -> NeighbourhoodProbe:
        """The data sets with ``obs[labels_key]`` are scored by kNN label agreement, the others against the PCA
        of their log-normalised counts (:func:`~opencellplm.baselines.pca_embedding`)."""
        from ..baselines import pca_embedding

        labels = {}
        if labels_key is not None:
            labels = {n: a.obs[labels_key].to_numpy() for n, a in adatas.items() if labels_key in a.obs}
        data = {
            name: (adata, None if name in labels else pca_embedding(adata, seed=seed).prediction)
            for name, adata in adatas.items()
        }
        return cls(data, k=k, labels=labels, select=select)

    def __call__(self, module: nn.Module, genes: Sequence[str]) -> dict[str, float]:
        """``val_agreement`` (the mean over the unlabelled data sets) and ``val_agreement_<name>`` for each;
        ``val_label_agreement`` (the mean over the labelled ones) and ``val_label_agreement_<name>``."""
        from ..metrics import knn_label_agreement, neighbourhood_agreement
        from ..model import CellPLM

        model = CellPLM(module, list(genes), meta={"gene_id_rule": "exact"}, device=next(module.parameters()).device)
        scores, label_scores = {}, {}
        for name, (adata, reference) in self.data.items():
            embedding = model.get_latent_representation(adata, max_cells=self.max_cells, precision="fp32")
            if name in self.labels:
                label_scores[f"{LABEL_METRIC}_{name}"] = knn_label_agreement(embedding, self.labels[name], k=self.k)
            else:
                scores[f"{PROBE_METRIC}_{name}"] = neighbourhood_agreement(embedding, reference, k=self.k)
        out = {}
        if scores:
            out |= {PROBE_METRIC: float(np.mean(list(scores.values())))} | scores
        if label_scores:
            out |= {LABEL_METRIC: float(np.mean(list(label_scores.values())))} | label_scores
        return out

    def settings(self) -> dict[str, Any]:
        """What a resumed run must share: the data sets' names and sizes, ``k``, the labelled sets and the
        selecting metric."""
        settings = {"k": self.k, "data": {name: list(self.data[name][0].shape) for name in self._names}}
        if self.labels:
            settings |= {"labelled": sorted(self.labels), "select": self.select}
        return settings
