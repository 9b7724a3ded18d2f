"""Normalisation layers by name; an unknown name is an error, never a silent identity."""

from __future__ import annotations

import torch
from torch import nn

GROUPNORM_GROUPS = 4  # the official model's GroupNorm always uses 4 groups


def make_norm(name: str, dim: int) -> nn.Module:
    """A normalisation layer over the last dimension of size ``dim``."""
    if name == "groupnorm":
        return nn.GroupNorm(GROUPNORM_GROUPS, dim)
    if name == "layernorm":
        return nn.LayerNorm(dim)
    if name == "batchnorm":
        return nn.BatchNorm1d(dim)
    if name == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-6)
    raise ValueError(f"unknown norm {name!r}; choose groupnorm, layernorm, batchnorm or rmsnorm")


class CellSetNorm(nn.Module):
    """Standardise each feature over the cells of the set, then scale and shift it (learned, per feature).

    BatchNorm's training-time arithmetic, used the same way in training and inference and without running
    statistics: a CellPLM forward is one cell set (the cells attend to each other), so the set is the natural
    unit, and a model never meets statistics it did not train with. With ``keep_mean`` the set's mean of each
    feature is added back: only the spread across cells is standardised, so set-level information (which tissue,
    which depth) still reaches the layers above.

    Why a decoder needs it: with per-cell norms (GroupNorm, LayerNorm) nothing stops a network from shrinking
    the differences between cells, and the NB reconstruction does shrink them early in training, while the
    decoder's map from the latent to the genes is still noise; the decoder then ignores the cell (the collapse
    of the first ``cellplm-small``). Standardised over the cells, the differences reach the next layer at unit
    scale whatever their size, and shrinking them buys nothing. A set of one cell has no spread: it gets the
    shift (plus its own values with ``keep_mean``).
    """

    def __init__(self, dim: int, *, keep_mean: bool = False, eps: float = 1e-5):
        super().__init__()
        self.keep_mean, self.eps = keep_mean, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (cells, dim)."""
        x32 = x.float()  # statistics in float32 under autocast
        mean = x32.mean(0, keepdim=True)
        var = x32.var(0, unbiased=False, keepdim=True)
        out = (x32 - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return (out + mean if self.keep_mean else out).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, keep_mean={self.keep_mean}, eps={self.eps}"
