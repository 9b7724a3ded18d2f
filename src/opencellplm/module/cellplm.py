"""CellPLMModule, the backbone: embed -> encode across cells -> latent -> NB decoder.

It carries no task: the losses of pretraining and imputation are functions of its output
(:mod:`.pretrain`, :mod:`.imputation`), and task modules extend it (:mod:`.annotation` adds a cell-type
head, :mod:`.perturbation` a perturbation network that enters through :meth:`CellPLMModule.encode`'s
``token_shift``).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..config import MaskingConfig, ModelConfig
from ..nn.embedding import CellEmbedder
from ..nn.flowformer import FlowformerEncoder
from .decoder import NBDecoder
from .latent import make_latent
from .masking import drop_cells, gene_mask, hide_genes, select_cells, thin_counts
from .outputs import CellBatch, CellPLMOutput, GMVAENoise, LatentOutput


class CellPLMModule(nn.Module):
    """The CellPLM network for one cell set per forward call.

    In eval mode the forward is deterministic. ``official=True`` reproduces the official
    implementation where it differs: Gumbel-noised mixture component and sampled ``z`` (replayed
    from ``noise`` when given), the SUM of covariate rows when covariate ids are missing, and no
    positional encoding. Cells are dropped and genes masked only when a :class:`MaskingConfig` is passed
    as ``corrupt`` (by the training objective that owns it); train/eval mode alone never corrupts.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.hidden_dim
        self.embedder = CellEmbedder(
            config.n_genes,
            d,
            dropout=config.dropout,
            norm=config.norm,
            positional=config.positional_encoding == "sinusoidal",
            pe_grid_size=config.pe_grid_size,
            per_10k=config.input_scaling == "log1p_cp10k",
        )
        enc = config.encoder
        self.encoder = FlowformerEncoder(
            d, enc.n_heads, enc.n_layers, dropout=config.dropout, attention_dropout=enc.attention_dropout
        )
        self.pre_latent_norm = nn.LayerNorm(d)
        self.latent = make_latent(d, config.latent)
        self.decoder = (
            None
            if config.decoder is None
            else NBDecoder(config.latent.dim, config.n_genes, config.decoder, dropout=config.dropout, norm=config.norm)
        )

    def forward(
        self,
        batch: CellBatch,
        *,
        official: bool = False,
        noise: GMVAENoise | None = None,
        corrupt: MaskingConfig | None = None,
        hide: torch.Tensor | None = None,
        decode_genes: torch.Tensor | None = None,
    ) -> CellPLMOutput:
        """Run one cell set through the model.

        ``corrupt`` applies that cell dropping and gene masking (in train or eval mode alike: validation
        passes it in eval mode to score masked reconstruction) and, in train mode only, its count thinning;
        None (the default) corrupts nothing.
        ``hide`` ((G_in,) bool) hides those input columns from the model in every cell, on top of any masking
        (``input_mask`` says so; the counts stay the truth of the losses). ``decode_genes`` (vocabulary rows) makes
        the decoder compute only those genes (default: all).
        """
        kept = torch.arange(batch.n_cells, device=batch.counts.device)
        input_mask = None
        counts = batch.counts
        if corrupt is not None:
            if not isinstance(corrupt, MaskingConfig):
                raise TypeError(f"corrupt must be a MaskingConfig or None, got {type(corrupt).__name__}")
            if corrupt.drop_cell_rate > 0:
                kept = drop_cells(batch.n_cells, corrupt, batch.counts.device)
                batch = select_cells(batch, kept)
            if corrupt.thin_rate > 0 and self.training:  # augmentation: validation keeps the real depths
                batch = replace(batch, counts=thin_counts(batch.counts, corrupt))
            if corrupt.cell_rate > 0 and corrupt.gene_rate > 0:
                input_mask = gene_mask(batch.n_cells, batch.counts.shape[1], corrupt, batch.counts.device)
            counts = batch.counts if input_mask is None else hide_genes(batch.counts, input_mask)
        if hide is not None:
            hide = torch.as_tensor(hide, device=batch.counts.device, dtype=torch.bool)
            if hide.shape != (batch.counts.shape[1],):
                raise ValueError(
                    f"hide needs one entry per input column ({batch.counts.shape[1]}), got {tuple(hide.shape)}"
                )
            columns = hide[None, :].expand(batch.n_cells, -1)
            input_mask = columns if input_mask is None else input_mask | columns
            counts = hide_genes(batch.counts, input_mask)
        latent = self.encode(replace(batch, counts=counts), official=official, noise=noise)
        nb = None
        if self.decoder is not None:
            missing = "sum" if official else "mean"
            nb = self.decoder(latent.embedding, batch, missing_covariate=missing, genes=decode_genes)
        return CellPLMOutput(latent=latent, nb=nb, logits=None, cells=batch, kept_cells=kept, input_mask=input_mask)

    def encode(
        self,
        batch: CellBatch,
        *,
        official: bool = False,
        noise: GMVAENoise | None = None,
        token_shift: torch.Tensor | None = None,
    ) -> LatentOutput:
        """The backbone: gene embedding -> encoder across the cells of the set -> latent (no corruption).

        ``token_shift`` ((d,) or (N, d)) is added to every cell's input token before the encoder: the input hook
        through which a task module steers the cells (perturbation). Task modules read the cell embedding here
        and put their own head on it.
        """
        h = self.embedder(batch.counts, batch.gene_index, batch.coords, use_positional=not official)  # (N, d)
        if token_shift is not None:
            h = h + token_shift.to(h.dtype)
        h = self.pre_latent_norm(self.encoder(h))  # (N, d)
        return self.latent(h, official=official, noise=noise)

    #: Tensors with one row per vocabulary gene (the gene axis first).
    PER_GENE = ("embedder.gene_embedding", "decoder.mean.weight", "decoder.mean.bias", "decoder.log_dispersion")

    def with_extra_genes(self, n_new: int) -> CellPLMModule:
        """A copy whose vocabulary has ``n_new`` more genes: the new gene-embedding and decoder rows are
        freshly initialised, every other weight is copied (and frozen parameters stay frozen)."""
        if n_new < 0:
            raise ValueError(f"n_new must be >= 0, got {n_new}")
        grown = self._like(self.config.replace(n_genes=self.config.n_genes + n_new))
        reference = next(self.parameters())
        grown = grown.to(device=reference.device, dtype=reference.dtype)
        state = grown.state_dict()
        for key, value in self.state_dict().items():
            state[key] = torch.cat([value, state[key][value.shape[0] :]]) if key in self.PER_GENE else value
        grown.load_state_dict(state)
        frozen = {name for name, p in self.named_parameters() if not p.requires_grad}
        for name, p in grown.named_parameters():
            p.requires_grad_(name not in frozen)
        return grown.train(self.training)

    def _like(self, config: ModelConfig) -> CellPLMModule:
        """A fresh module of this kind with ``config`` (task modules add their own parts)."""
        return CellPLMModule(config)

    def n_parameters(self) -> int:
        """Number of parameters (the fixed sinusoid table is a buffer and not counted)."""
        return sum(p.numel() for p in self.parameters())
