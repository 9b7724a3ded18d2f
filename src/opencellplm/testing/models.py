"""A tiny CellPLM with seeded random weights: for tests, examples and checking a pipeline end to end in seconds."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import DecoderConfig, EncoderConfig, LatentConfig, ModelConfig
from ..model import CellPLM
from ..module import CellPLMModule


def tiny_model(
    genes: Sequence[str],
    *,
    seed: int = 0,
    dropout: float = 0.2,
    n_heads: int = 2,
    positional: bool = False,
    decoder: bool = True,
    n_batches: int = 0,
    n_datasets: int = 0,
) -> CellPLM:
    """A one-layer model over the vocabulary ``genes`` (hidden 16, latent 8 of 4 clusters), its weights drawn with
    ``torch.manual_seed(seed)``: nothing it outputs means anything, but every path runs as with a real model.

    ``positional`` adds the sinusoidal encoding of coordinates; ``decoder=False`` leaves out the NB decoder (an
    encoder-only model); ``n_batches`` / ``n_datasets`` size the decoder's covariate tables.
    """
    config = ModelConfig(
        n_genes=len(genes),
        hidden_dim=16,
        dropout=dropout,
        positional_encoding="sinusoidal" if positional else "none",
        encoder=EncoderConfig(n_layers=1, n_heads=n_heads),
        latent=LatentConfig(dim=8, n_clusters=4, hidden_dim=12),
        decoder=DecoderConfig(hidden_dim=16, n_batches=n_batches, n_datasets=n_datasets) if decoder else None,
    )
    torch.manual_seed(seed)
    return CellPLM(CellPLMModule(config), list(genes))
