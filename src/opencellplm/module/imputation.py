"""The imputation loss: GMVAE terms + NB loss on the measured genes, and every input gene's prediction."""

from __future__ import annotations

import torch

from .losses import LossOutput, input_columns, nb_imputation_loss, require_nb, with_latent_terms
from .outputs import CellPLMOutput


def imputation_loss(out: CellPLMOutput, *, measured: torch.Tensor | None = None) -> LossOutput:
    """GMVAE terms + NB loss on the ``measured`` input genes (bool mask or indices; default: all) of a forward's
    output; ``prediction`` is the (N, G_in) size-factor-scaled NB mean of every input gene (the imputed
    expression)."""
    nb = require_nb(out)
    columns = input_columns(measured, out.cells.counts.shape[1], out.cells.counts.device)
    objective, prediction = nb_imputation_loss(out.cells.dense_counts(), *nb.at(out.cells.gene_index), columns)
    return with_latent_terms(out, objective, prediction)
