"""The perturbation module: the pretrained backbone (with its NB decoder) and a network that turns perturbed genes
into a shift of every cell's input token, plus a direct readout onto the decoded genes.

It enters the backbone through :meth:`CellPLMModule.encode <opencellplm.module.CellPLMModule.encode>`'s
``token_shift``; :mod:`opencellplm.tasks.perturbation` owns the data, the objective and the task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .._lognorm import TARGET_SUM
from .cellplm import CellPLMModule
from .outputs import CellBatch


@dataclass(frozen=True)
class PerturbationOutput:
    """Two decodings of one control set: ``perturbed`` (with the perturbation vector) and ``control`` (without),
    NB means over the input genes, (N, G_in); ``dispersion`` (N, G_in)."""

    perturbed: torch.Tensor
    control: torch.Tensor
    dispersion: torch.Tensor


class PerturbationModule(nn.Module):
    """The CellPLM backbone (with its NB decoder) and a perturbation network (see the module docstring).

    The backbone always runs in eval mode (no dropout, deterministic latent), so that the two decodings of
    :meth:`forward` differ by the perturbation alone; ``train()`` switches the perturbation network only.
    """

    def __init__(self, backbone: CellPLMModule, *, hidden_dim: int = 128):
        super().__init__()
        if backbone.decoder is None:
            raise ValueError("the backbone has no NB decoder (config.decoder is None); use a pretrained CellPLM")
        self.backbone = backbone
        d = backbone.config.hidden_dim
        self.gene_norm = nn.LayerNorm(d)
        self.gene_mlp = nn.Sequential(nn.Linear(d, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, d))
        nn.init.zeros_(self.gene_mlp[-1].weight)  # the residual starts at "no change"
        nn.init.zeros_(self.gene_mlp[-1].bias)
        self.direction = nn.Parameter(torch.stack([-torch.ones(d), torch.ones(d)]))  # (2, d): down, up
        # Direct readout of the perturbation vector onto each output gene's log NB mean: a bilinear form of the
        # output gene's (normalised) pretrained row, plus a free per-gene vector that starts at zero.
        self.readout_norm = nn.LayerNorm(d)
        self.readout = nn.Linear(d, d, bias=False)
        self.gene_readout = nn.Parameter(torch.zeros(backbone.config.n_genes, d))
        # Per output gene and direction, the change shared by every perturbed gene (the training-mean effect).
        self.shared_effect = nn.Parameter(torch.zeros(backbone.config.n_genes, 2))
        self.backbone.eval()

    def train(self, mode: bool = True) -> PerturbationModule:
        super().train(mode)
        self.backbone.eval()
        return self

    def shift(self, genes: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """The (d,) token shift of perturbing vocabulary rows ``genes`` (k,) in ``directions`` (k,; 0 down, 1 up)."""
        rows = self.backbone.embedder.gene_embedding[genes]  # (k, d)
        effects = self.gene_mlp(self.gene_norm(rows)) * self.direction[directions]  # (k, d)
        return effects.sum(0)  # (d,)

    def residual(self, shift: torch.Tensor, directions: torch.Tensor, gene_index: torch.Tensor) -> torch.Tensor:
        """(G_in,) change of each input gene's log NB mean read directly from the (d,) perturbation vector, plus
        the shared effect of each perturbed gene's direction."""
        rows = self.readout_norm(self.backbone.embedder.gene_embedding[gene_index])  # (G_in, d)
        specific = (self.readout(rows) + self.gene_readout[gene_index]) @ shift / math.sqrt(shift.shape[0])
        shared = self.shared_effect[gene_index][:, directions].sum(1)  # (G_in,)
        return specific + shared

    def decode(
        self, batch: CellBatch, shift: torch.Tensor | None, directions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """NB mean and dispersion over the input genes, (N, G_in) each: ``shift`` added to every token and its
        direct readout (with the shared effect of ``directions``) to every cell's log mean (None: the plain
        backbone)."""
        bb = self.backbone
        z = bb.encode(batch, token_shift=shift).embedding  # (N, latent): the shift enters every input token
        nb = bb.decoder(z, batch, genes=batch.gene_index)
        mean = nb.mean
        if shift is not None:
            residual = self.residual(shift.float(), directions, batch.gene_index)  # (G_in,)
            mean = mean * torch.exp(residual).float()  # (N, G_in)
        return mean, nb.dispersion

    def forward(self, batch: CellBatch, genes: torch.Tensor, directions: torch.Tensor) -> PerturbationOutput:
        perturbed, dispersion = self.decode(batch, self.shift(genes, directions), directions)
        control, _ = self.decode(batch, None)
        return PerturbationOutput(perturbed=perturbed, control=control, dispersion=dispersion)


def log_normalised(mean: torch.Tensor) -> torch.Tensor:
    """``log1p(mean / total * 1e4)`` per cell (row)."""
    return torch.log1p(mean / mean.sum(1, keepdim=True) * TARGET_SUM)


def predicted_change(out: PerturbationOutput) -> torch.Tensor:
    """(G_in,) mean over the set's cells of the log-normalised perturbed minus control decodings."""
    return (log_normalised(out.perturbed.float()) - log_normalised(out.control.float())).mean(0)
