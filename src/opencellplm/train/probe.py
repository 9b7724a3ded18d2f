"""Choosing a pretraining checkpoint by what users get: a label-free probe of the zero-shot embedding.

The masked-reconstruction loss on a few held-out sets moves noisily and says little about the embedding
users cluster. :class:`NeighbourhoodProbe` embeds fixed data sets with the model being trained and scores
how much of the standard PCA pipeline's cell neighbourhoods the embedding keeps
(:func:`~opencellplm.metrics.neighbourhood_agreement`); pretraining can keep the state where that is best.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from anndata import AnnData
from torch import nn

PROBE_METRIC = "val_agreement"


@dataclass
class NeighbourhoodProbe:
    """Data sets whose zero-shot embedding is scored against their PCA at every evaluation.

    Build it with :meth:`from_adatas`. ``data[name]`` holds the cells (raw counts, ``var_names`` in the
    corpus's vocabulary) and the reference PCA; ``k`` neighbours are compared.
    """

    data: dict[str, tuple[AnnData, np.ndarray]]
    k: int = 15
    max_cells: int = 4000
    _names: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("a neighbourhood probe needs at least one data set")
        self._names = list(self.data)

    @classmethod
    def from_adatas(cls, adatas: Mapping[str, AnnData], *, k: int = 15, seed: int = 0) -> NeighbourhoodProbe:
        """PCA of log-normalised counts (:func:`~opencellplm.baselines.pca_embedding`) as each reference."""
        from ..baselines import pca_embedding

        return cls({name: (adata, pca_embedding(adata, seed=seed).prediction) for name, adata in adatas.items()}, k=k)

    def __call__(self, module: nn.Module, genes: Sequence[str]) -> dict[str, float]:
        """``val_agreement`` (the mean over data sets) and ``val_agreement_<name>`` for each."""
        from ..metrics import neighbourhood_agreement
        from ..model import CellPLM

        model = CellPLM(module, list(genes), meta={"gene_id_rule": "exact"}, device=next(module.parameters()).device)
        scores = {}
        for name, (adata, reference) in self.data.items():
            embedding = model.get_latent_representation(adata, max_cells=self.max_cells, precision="fp32")
            scores[f"{PROBE_METRIC}_{name}"] = neighbourhood_agreement(embedding, reference, k=self.k)
        return {PROBE_METRIC: float(np.mean(list(scores.values())))} | scores

    def settings(self) -> dict[str, Any]:
        """What a resumed run must share: the data sets' names and sizes and ``k``."""
        return {"k": self.k, "data": {name: list(self.data[name][0].shape) for name in self._names}}
