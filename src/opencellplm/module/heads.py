"""Task heads on the cell embedding."""

from __future__ import annotations

import torch
from torch import nn

from ..config import AnnotationHeadConfig
from ..nn.dropout import Dropout


class AnnotationHead(nn.Module):
    """``[Dropout, Linear] (+ ReLU, Dropout, Linear)*``: logits over cell types."""

    def __init__(self, in_dim: int, config: AnnotationHeadConfig):
        super().__init__()
        dims = [in_dim] + [config.hidden_dim] * config.n_hidden_layers + [config.n_classes]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            if i:
                layers.append(nn.ReLU())
            layers += [Dropout(config.dropout), nn.Linear(a, b)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.mlp(embedding)
