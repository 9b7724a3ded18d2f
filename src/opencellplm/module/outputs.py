"""Typed values passed between the stages of the model."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CellBatch:
    """One cell set (the cells that attend to each other in one forward call).

    Attributes
    ----------
    counts
        (N, G_in) raw counts, preferably sparse CSR.
    gene_index
        (G_in,) vocabulary row of each input column.
    coords
        (N, 2) coordinates in [0, 1], or None.
    batch, dataset, platform
        (N,) covariate ids for the decoder, or None.
    """

    counts: torch.Tensor
    gene_index: torch.Tensor
    coords: torch.Tensor | None = None
    batch: torch.Tensor | None = None
    dataset: torch.Tensor | None = None
    platform: torch.Tensor | None = None

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    def covariate(self, name: str) -> torch.Tensor | None:
        return getattr(self, name)

    def to(self, device: torch.device | str) -> CellBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return CellBatch(
            counts=self.counts.to(device),
            gene_index=self.gene_index.to(device),
            coords=move(self.coords),
            batch=move(self.batch),
            dataset=move(self.dataset),
            platform=move(self.platform),
        )


@dataclass(frozen=True)
class GMVAENoise:
    """Noise of one GMVAE forward, for reproducing the official (random) eval behaviour.

    Attributes
    ----------
    gumbel_uniform
        (N, K) uniforms turned into Gumbel noise on the cluster logits.
    gaussian_eps
        (N, D) standard normal draws of the reparameterised ``z``.
    """

    gumbel_uniform: torch.Tensor
    gaussian_eps: torch.Tensor


@dataclass(frozen=True)
class LatentOutput:
    """Output of the latent layer.

    ``embedding`` is what the decoder and heads read: the posterior mean in eval (the cell
    embedding), a reparameterised sample in training. ``loss`` holds the floored GMVAE terms (0 for
    'ae'); ``cluster`` the one-hot (eval) or soft (training) mixture component.
    """

    embedding: torch.Tensor
    loss: torch.Tensor
    cluster_logits: torch.Tensor | None = None
    cluster: torch.Tensor | None = None


@dataclass(frozen=True)
class NBOutput:
    """NB parameters over the whole vocabulary: ``mean`` and ``dispersion`` are (N, G)."""

    mean: torch.Tensor
    dispersion: torch.Tensor


@dataclass(frozen=True)
class CellPLMOutput:
    """Everything one forward produces.

    ``cells`` are the cells the output rows describe, with their unmasked counts: the input batch,
    or in training the rows ``kept_cells`` of it that survived cell dropping. ``input_mask`` is the
    (N_kept, G_in) bool mask of counts hidden from the model (None when nothing is masked).
    """

    latent: LatentOutput
    nb: NBOutput | None
    logits: torch.Tensor | None
    cells: CellBatch
    kept_cells: torch.Tensor
    input_mask: torch.Tensor | None

    @property
    def embedding(self) -> torch.Tensor:
        return self.latent.embedding
