"""Typed values passed between the stages of the model."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

COVARIATES = ("batch", "dataset", "platform")


@dataclass(frozen=True)
class CellBatch:
    """One cell set (the cells that attend to each other in one forward call).

    Dense or COO counts are converted to CSR; shapes, dtypes and devices are checked on creation.

    Attributes
    ----------
    counts
        (N, G_in) raw counts, sparse CSR.
    gene_index
        (G_in,) vocabulary row of each input column (integer).
    coords
        (N, 2 or 3) coordinates scaled to [0, 1] per set, or None.
    batch, dataset, platform
        (N,) integer covariate ids for the decoder, or None.
    """

    counts: torch.Tensor
    gene_index: torch.Tensor
    coords: torch.Tensor | None = None
    batch: torch.Tensor | None = None
    dataset: torch.Tensor | None = None
    platform: torch.Tensor | None = None

    def __post_init__(self) -> None:
        counts = self.counts
        if not isinstance(counts, torch.Tensor) or counts.ndim != 2:
            raise ValueError(f"counts must be a 2-D tensor (cells x genes), got {_describe(counts)}")
        if not counts.is_sparse_csr:
            counts = counts.to_sparse_csr() if counts.layout == torch.strided else counts.coalesce().to_sparse_csr()
            object.__setattr__(self, "counts", counts)
        n, g = counts.shape
        device = counts.device
        gene_index = self.gene_index
        if not isinstance(gene_index, torch.Tensor) or gene_index.shape != (g,) or gene_index.is_floating_point():
            raise ValueError(f"gene_index must be an integer tensor of shape ({g},), got {_describe(gene_index)}")
        for name in ("gene_index", "coords", *COVARIATES):
            value = getattr(self, name)
            if value is not None and value.device != device:
                raise ValueError(f"{name} is on {value.device} but counts are on {device}")
        coords = self.coords
        if coords is not None and (coords.shape not in ((n, 2), (n, 3)) or not coords.is_floating_point()):
            raise ValueError(f"coords must be a float tensor of shape ({n}, 2 or 3), got {_describe(coords)}")
        for name in COVARIATES:
            ids = getattr(self, name)
            if ids is not None and (ids.shape != (n,) or ids.is_floating_point()):
                raise ValueError(f"{name} ids must be an integer tensor of shape ({n},), got {_describe(ids)}")

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    def dense_counts(self) -> torch.Tensor:
        """(N, G_in) dense counts (for the losses, which compare with dense NB parameters)."""
        return self.counts.to_dense()

    def per_cell(self) -> dict[str, torch.Tensor]:
        """The per-cell fields other than counts that are set: coords and covariates."""
        return {k: v for k in ("coords", *COVARIATES) if (v := getattr(self, k)) is not None}

    def to(self, device: torch.device | str) -> CellBatch:
        moved = {k: v.to(device) for k, v in self.per_cell().items()}
        return replace(self, counts=self.counts.to(device), gene_index=self.gene_index.to(device), **moved)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


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
    """NB parameters: ``mean`` and ``dispersion`` are (N, G) over the whole vocabulary, or (N, len(genes)) over
    the vocabulary rows ``genes`` when the forward decoded only those (``decode_genes``)."""

    mean: torch.Tensor
    dispersion: torch.Tensor
    genes: torch.Tensor | None = None

    def at(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, dispersion)`` at the vocabulary ``rows``, (N, len(rows)); an error for rows not decoded. The
        decoded genes themselves, in their order, are returned as they are (no copy)."""
        decoded = self.genes if self.genes is not None else torch.arange(self.mean.shape[1], device=rows.device)
        if rows.shape == decoded.shape and torch.equal(rows, decoded):
            return self.mean, self.dispersion
        if self.genes is None:
            return self.mean[:, rows], self.dispersion[:, rows]
        position = torch.full((int(max(self.genes.max(), rows.max())) + 1,), -1, device=rows.device, dtype=torch.long)
        position[self.genes] = torch.arange(len(self.genes), device=rows.device)
        columns = position[rows]
        if bool((columns < 0).any()):
            raise ValueError("these NB parameters were decoded for other genes (decode_genes) than the ones asked for")
        return self.mean[:, columns], self.dispersion[:, columns]


@dataclass(frozen=True)
class CellPLMOutput:
    """Everything one forward produces.

    ``cells`` are the cells the output rows describe, with their unmasked counts: the input batch,
    or, in a corrupted forward, the rows ``kept_cells`` of it that survived cell dropping. ``input_mask`` is the
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
