"""Batch-aware negative-binomial decoder: embedding -> NB mean and dispersion for every vocabulary gene."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig
from ..nn.dropout import Dropout
from ..nn.norm import CellSetNorm, make_norm
from .outputs import CellBatch, NBOutput

MEAN_RANGE = (1e-5, 1e6)
DISPERSION_RANGE = (1e-4, 1e4)


class CovariateEmbedding(nn.Module):
    """``Norm(PReLU(Embedding[id]))``, added to a decoder block's output."""

    def __init__(self, n: int, dim: int, norm: str):
        super().__init__()
        self.embedding = nn.Embedding(n, dim)
        self.act = nn.PReLU()
        self.norm = make_norm(norm, dim)

    def forward(self, ids: torch.Tensor | None, *, missing: str) -> torch.Tensor:
        if ids is not None:
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.embedding.num_embeddings):
                raise ValueError(
                    f"covariate ids must lie in [0, {self.embedding.num_embeddings}), "
                    f"got range [{int(ids.min())}, {int(ids.max())}]"
                )
            return self.norm(self.act(self.embedding(ids)))
        # No ids: one shared (1, H) vector, broadcast over cells. The official code feeds the SUM
        # of all rows (its comment says average); we use the mean unless asked to match it.
        rows = self.embedding.weight.detach()
        pooled = rows.sum(0, keepdim=True) if missing == "sum" else rows.mean(0, keepdim=True)
        return self.norm(self.act(pooled))


class DecoderBlock(nn.Module):
    """``Norm(Dropout(PReLU(Linear(x))))`` plus one :class:`CovariateEmbedding` per covariate."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        covariate_sizes: dict[str, int],
        *,
        dropout: float,
        norm: str,
        block_norm: str | None = None,
    ):
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)
        self.act = nn.PReLU()
        self.dropout = Dropout(dropout)
        # the covariates keep the model's norm: every cell of a set shares its ids, which a cell-set norm would erase
        self.norm = (
            make_norm(norm, dim)
            if block_norm is None
            else CellSetNorm(dim, keep_mean=block_norm == "cellset_keep_mean")
        )
        self.covariates = nn.ModuleDict({name: CovariateEmbedding(n, dim, norm) for name, n in covariate_sizes.items()})

    def forward(self, x: torch.Tensor, batch: CellBatch, *, missing: str) -> torch.Tensor:
        x = self.norm(self.dropout(self.act(self.linear(x))))
        for name, covariate in self.covariates.items():
            x = x + covariate(getattr(batch, name), missing=missing)
        return x


class NBDecoder(nn.Module):
    """Hidden blocks, a ReLU bottleneck, then ``mean = clamp(exp(.))`` and a per-gene dispersion."""

    def __init__(self, in_dim: int, n_genes: int, config: DecoderConfig, *, dropout: float, norm: str):
        super().__init__()
        h = config.hidden_dim
        self.blocks = nn.ModuleList(
            DecoderBlock(
                in_dim if i == 0 else h,
                h,
                config.covariate_sizes,
                dropout=dropout,
                norm=norm,
                block_norm=config.block_norm,
            )
            for i in range(config.n_hidden_layers)
        )
        self.bottleneck = nn.Linear(h if config.n_hidden_layers else in_dim, config.bottleneck_dim)
        self.mean = nn.Linear(config.bottleneck_dim, n_genes)
        self.log_dispersion = nn.Parameter(torch.randn(n_genes))

    def forward(
        self, z: torch.Tensor, batch: CellBatch, *, missing_covariate: str = "mean", genes: torch.Tensor | None = None
    ) -> NBOutput:
        """NB parameters of every vocabulary gene, or of the vocabulary rows ``genes`` only (a task that needs a
        few genes of a large vocabulary skips the rest of the output layer, its largest)."""
        x = z
        for block in self.blocks:
            x = block(x, batch, missing=missing_covariate)
        a = F.relu(self.bottleneck(x))  # (N, bottleneck)
        if genes is None:
            logits, log_dispersion = self.mean(a), self.log_dispersion
        else:
            logits = F.linear(a, self.mean.weight[genes], self.mean.bias[genes])
            log_dispersion = self.log_dispersion[genes]
        mean = torch.clamp(torch.exp(logits.float()), *MEAN_RANGE)  # (N, G), float32 even under autocast
        dispersion = torch.clamp(torch.exp(log_dispersion), *DISPERSION_RANGE).expand(z.shape[0], -1)
        return NBOutput(mean=mean, dispersion=dispersion, genes=genes)
