"""CellPLMModule: embed -> encode across cells -> latent -> NB decoder and/or annotation head."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
from torch import nn

from ..config import MaskingConfig, ModelConfig
from ..nn.embedding import CellEmbedder
from ..nn.flowformer import FlowformerEncoder
from .decoder import NBDecoder
from .heads import AnnotationHead
from .latent import make_latent
from .losses import LossOutput, annotation_loss, nb_imputation_loss, nb_reconstruction_loss
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
        self.head = None if config.annotation is None else AnnotationHead(config.latent.dim, config.annotation)

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
        logits = None if self.head is None else self.head(latent.embedding)
        return CellPLMOutput(latent=latent, nb=nb, logits=logits, cells=batch, kept_cells=kept, input_mask=input_mask)

    def encode(self, batch: CellBatch, *, official: bool = False, noise: GMVAENoise | None = None) -> LatentOutput:
        """The backbone: gene embedding -> encoder across the cells of the set -> latent (no corruption).

        Task modules read the cell embedding here and put their own head on it.
        """
        h = self.embedder(batch.counts, batch.gene_index, batch.coords, use_positional=not official)  # (N, d)
        h = self.pre_latent_norm(self.encoder(h))  # (N, d)
        return self.latent(h, official=official, noise=noise)

    #: Tensors with one row per vocabulary gene (the gene axis first).
    PER_GENE = ("embedder.gene_embedding", "decoder.mean.weight", "decoder.mean.bias", "decoder.log_dispersion")

    def with_extra_genes(self, n_new: int) -> CellPLMModule:
        """A copy whose vocabulary has ``n_new`` more genes: the new gene-embedding and decoder rows are
        freshly initialised, every other weight is copied (and frozen parameters stay frozen)."""
        if n_new < 0:
            raise ValueError(f"n_new must be >= 0, got {n_new}")
        grown = CellPLMModule(self.config.replace(n_genes=self.config.n_genes + n_new))
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

    def n_parameters(self) -> int:
        """Number of parameters (the fixed sinusoid table is a buffer and not counted)."""
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------------------------- losses
    def reconstruction_loss(
        self,
        out: CellPLMOutput,
        *,
        measured: torch.Tensor | None = None,
        alignment: Literal["gene", "position"] = "gene",
        masked_term: bool = False,
    ) -> LossOutput:
        """Pretraining loss: GMVAE terms + NB reconstruction of the measured genes.

        Parameters
        ----------
        out
            Output of :meth:`forward` (in training, of its masked forward).
        measured
            Input columns with measured counts (bool mask or indices); default: all.
        alignment
            ``"gene"`` compares each input column with the decoder column of its gene.
            ``"position"`` reproduces the official loss, which uses input positions as decoder
            columns; that is only right when the input spans the whole vocabulary in order.
        masked_term
            Add the NB term on the masked entries (the ``masked_term`` of the masking the forward was
            given); nothing to add when ``out`` has no masked entries.
        """
        nb = self._require_nb(out)
        columns = _as_index(measured, out.cells.counts.shape[1], out.cells.counts.device)
        decoder_columns = out.cells.gene_index[columns] if alignment == "gene" else columns
        truth = (
            out.cells.counts.to_dense()[:, columns] if out.cells.counts.is_sparse_csr else out.cells.counts[:, columns]
        )
        mask = None if out.input_mask is None else out.input_mask[:, columns]
        mean, dispersion = nb.at(decoder_columns)
        objective = nb_reconstruction_loss(
            truth,
            mean,
            dispersion,
            mask,
            masked_term=masked_term and out.input_mask is not None,
        )
        return _total(out, objective)

    def imputation_loss(self, out: CellPLMOutput, *, measured: torch.Tensor | None = None) -> LossOutput:
        """GMVAE terms + NB loss on the measured input genes; ``prediction`` is the (N, G_in)
        size-factor-scaled NB mean of every input gene (the imputed expression)."""
        nb = self._require_nb(out)
        columns = _as_index(measured, out.cells.counts.shape[1], out.cells.counts.device)
        gene_index = out.cells.gene_index
        truth = out.cells.dense_counts()
        objective, prediction = nb_imputation_loss(truth, *nb.at(gene_index), columns)
        return _total(out, objective, prediction)

    def annotation_loss(
        self, out: CellPLMOutput, labels: torch.Tensor, *, mask: torch.Tensor | None = None
    ) -> LossOutput:
        """Cross-entropy of the head's logits against ``labels`` (class ids of the input cells, before
        any training-time cell dropping), over the cells selected by ``mask`` (default: all). Zero when
        no selected cell survived dropping."""
        if out.logits is None:
            raise ValueError("this model has no annotation head (config.annotation is None)")
        labels = torch.as_tensor(labels, device=out.logits.device)
        if labels.ndim != 1 or labels.is_floating_point():
            raise ValueError(
                f"labels must be a 1-D tensor of integer class ids, got {labels.dtype} {tuple(labels.shape)}"
            )
        labels = labels[out.kept_cells]
        logits = out.logits
        if mask is not None:
            mask = torch.as_tensor(mask, device=out.logits.device)[out.kept_cells]
            logits, labels = logits[mask], labels[mask]
        return _total(out, annotation_loss(logits, labels))

    def _require_nb(self, out: CellPLMOutput):
        if out.nb is None:
            raise ValueError("this model has no NB decoder (config.decoder is None)")
        return out.nb


def _as_index(selection: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    if selection is None:
        return torch.arange(n, device=device)
    selection = torch.as_tensor(selection, device=device)
    if selection.dtype == torch.bool:
        if selection.shape != (n,):
            raise ValueError(f"a boolean gene selection needs {n} entries, got {tuple(selection.shape)}")
        return selection.nonzero().squeeze(1)
    return selection.long()


def _total(out: CellPLMOutput, objective: torch.Tensor, prediction: torch.Tensor | None = None) -> LossOutput:
    latent = out.latent.loss
    return LossOutput(total=latent + objective, latent=latent, objective=objective, prediction=prediction)
