"""Objectives on tensors: NB reconstruction (pretraining), NB imputation, cross-entropy (annotation).

Each takes dense, column-aligned tensors; the task-level losses (:func:`~.pretrain.reconstruction_loss`,
:func:`~.imputation.imputation_loss`, :func:`~.annotation.classification_loss`) align a forward's output
and add the latent terms. Operation order follows the official objectives so that their values are reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..distributions import nb_log_prob
from .outputs import CellPLMOutput, NBOutput


@dataclass(frozen=True)
class LossOutput:
    """``total = latent + objective``; ``prediction`` is set by objectives that produce one; ``metrics`` holds
    further named scalars a task wants in the training log (summed over a step's items, then divided by them)."""

    total: torch.Tensor
    latent: torch.Tensor
    objective: torch.Tensor
    prediction: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    def logged(self, objective_name: str) -> dict[str, float]:
        """The scalars of the training log: ``loss``, ``latent_loss``, the objective under ``objective_name``, and
        :attr:`metrics`."""
        values = {"loss": self.total, "latent_loss": self.latent, objective_name: self.objective} | self.metrics
        return {name: float(value.item()) for name, value in values.items()}


def _rescale(mean: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Scale each cell's mean to the cell's observed total."""
    return mean / mean.sum(1, keepdim=True) * truth.sum(1, keepdim=True)


def nb_reconstruction_loss(
    truth: torch.Tensor,
    mean: torch.Tensor,
    dispersion: torch.Tensor,
    input_mask: torch.Tensor | None = None,
    *,
    masked_term: bool = False,
) -> torch.Tensor:
    """Mean over cells of the summed NB negative log-likelihood, means rescaled to each cell's total.

    Parameters
    ----------
    truth, mean, dispersion
        (N, G) aligned columns (measured genes only).
    input_mask
        (N, G) bool, True where the model did not see the count. Only cells with a masked entry
        count; without a mask, all cells do.
    masked_term
        Add the same NLL evaluated on the masked entries only (the denoising term).
    """
    if input_mask is None:
        t, mu, th = truth, mean, dispersion
    else:
        cells = input_mask.any(1)
        if not cells.any():  # nothing hidden in these genes: no signal, no NaN
            return mean.sum() * 0.0
        t, mu, th, input_mask = truth[cells], mean[cells], dispersion[cells], input_mask[cells]
    nll = -nb_log_prob(t, _rescale(mu, t), th)
    if masked_term and input_mask is not None:
        nll = nll + _masked_entries_nll(t, mu, th, input_mask)
    return nll.sum(-1).mean()


def _masked_entries_nll(truth: torch.Tensor, mean: torch.Tensor, dispersion: torch.Tensor, mask: torch.Tensor):
    """(N, G) NB negative log-likelihood of the masked entries alone, each cell's means rescaled to its masked total,
    and exactly 0 elsewhere.

    The likelihood is evaluated on the masked entries only (a fraction of the matrix: the dense term spent most of
    its cost on zeros); the per-cell totals are dense sums over the zeroed matrix, so every value equals
    that of the dense computation bit for bit.
    """
    m = mask.to(truth.dtype)
    mean_total, truth_total = (mean * m).sum(1), (truth * m).sum(1)
    rows, cols = mask.nonzero(as_tuple=True)
    t = truth[rows, cols]
    mu = mean[rows, cols] / mean_total[rows] * truth_total[rows]
    values = -nb_log_prob(t, mu, dispersion[rows, cols])
    return torch.zeros(truth.shape, dtype=values.dtype, device=values.device).index_put((rows, cols), values)


def nb_imputation_loss(
    truth: torch.Tensor, mean: torch.Tensor, dispersion: torch.Tensor, measured: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """NB loss on the measured genes, and the prediction for all genes.

    ``truth``, ``mean`` and ``dispersion`` are (N, G_in) in input-column order; ``measured`` indexes
    the columns whose counts are known. Each cell's size factor
    ``sum(truth[:, measured]) / sum(mean[:, measured])`` scales both the NB mean of the loss and the
    returned (N, G_in) prediction.
    """
    t, mu, th = truth[:, measured], mean[:, measured], dispersion[:, measured]
    size_factor = t.sum(1, keepdim=True) / mu.sum(1, keepdim=True)
    loss = (-nb_log_prob(t, mu * size_factor, th)).sum(-1).mean()
    return loss, mean * size_factor


def annotation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; 0 (with a graph, no gradient) when there is no labelled cell."""
    if labels.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels.long())


def with_latent_terms(
    out: CellPLMOutput, objective: torch.Tensor, prediction: torch.Tensor | None = None
) -> LossOutput:
    """A task's objective plus the forward's latent terms (GMVAE; 0 for a plain latent)."""
    latent = out.latent.loss
    return LossOutput(total=latent + objective, latent=latent, objective=objective, prediction=prediction)


def require_nb(out: CellPLMOutput) -> NBOutput:
    """The forward's NB output, or a ValueError for a model without a decoder."""
    if out.nb is None:
        raise ValueError("this model has no NB decoder (config.decoder is None)")
    return out.nb


def input_columns(selection: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """Indices of the selected input columns (a bool mask of ``n`` or indices; None: all ``n``)."""
    if selection is None:
        return torch.arange(n, device=device)
    selection = torch.as_tensor(selection, device=device)
    if selection.dtype == torch.bool:
        if selection.shape != (n,):
            raise ValueError(f"a boolean gene selection needs {n} entries, got {tuple(selection.shape)}")
        return selection.nonzero().squeeze(1)
    return selection.long()
