"""Normalisation layers by name; an unknown name is an error, never a silent identity."""

from __future__ import annotations

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
