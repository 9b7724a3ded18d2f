"""The pretraining loss, shared by pretraining and denoising fine-tuning: GMVAE terms + NB reconstruction."""

from __future__ import annotations

from typing import Literal

import torch

from .losses import LossOutput, input_columns, nb_reconstruction_loss, require_nb, with_latent_terms
from .outputs import CellPLMOutput


def reconstruction_loss(
    out: CellPLMOutput,
    *,
    measured: torch.Tensor | None = None,
    alignment: Literal["gene", "position"] = "gene",
    masked_term: bool = False,
) -> LossOutput:
    """GMVAE terms + NB reconstruction of the measured genes of a forward's output.

    Parameters
    ----------
    out
        Output of :meth:`CellPLMModule.forward <opencellplm.module.CellPLMModule.forward>` (in training, of its
        masked forward).
    measured
        Input columns with measured counts (bool mask or indices); default: all.
    alignment
        ``"gene"`` compares each input column with the decoder column of its gene. ``"position"`` reproduces the
        official loss, which uses input positions as decoder columns; that is only right when the input spans the
        whole vocabulary in order.
    masked_term
        Add the NB term on the masked entries (the ``masked_term`` of the masking the forward was given); nothing
        to add when ``out`` has no masked entries.
    """
    nb = require_nb(out)
    counts = out.cells.counts.to_dense() if out.cells.counts.is_sparse_csr else out.cells.counts
    columns = input_columns(measured, out.cells.counts.shape[1], out.cells.counts.device)
    decoder_columns = out.cells.gene_index[columns] if alignment == "gene" else columns
    if measured is None:  # every input column, in order: no copies of the (N, G) matrices
        truth, mask = counts, out.input_mask
    else:
        truth, mask = counts[:, columns], None if out.input_mask is None else out.input_mask[:, columns]
    mean, dispersion = nb.at(decoder_columns)
    objective = nb_reconstruction_loss(
        truth, mean, dispersion, mask, masked_term=masked_term and out.input_mask is not None
    )
    return with_latent_terms(out, objective)
