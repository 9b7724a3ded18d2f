"""2-D sinusoidal positional encoding of cell coordinates."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoid_table(dim: int, grid_size: int = 100) -> torch.Tensor:
    """The (grid_size**2, dim) table of the official ``Sinusoidal2dPE``.

    Row ``r = i * grid_size + j`` encodes position j (the second coordinate) in its first half
    and position i (the first coordinate) in its second half, each as interleaved sin/cos.
    """
    if dim % 4:
        raise ValueError(f"the sinusoidal encoding needs a dimension divisible by 4, got {dim}")
    axis = axis_codes(torch.arange(grid_size), dim // 2)  # (grid, dim/2)
    i, j = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    return torch.cat([axis[j.reshape(-1)], axis[i.reshape(-1)]], dim=1)


def axis_codes(positions: torch.Tensor, width: int) -> torch.Tensor:
    """Interleaved sin/cos codes of integer positions: (N,) -> (N, width), as one half of the table."""
    div = torch.exp(torch.arange(0.0, width, 2, device=positions.device) * -(math.log(10000.0) / width))
    angles = positions.to(div.dtype)[:, None] * div  # (N, width/2)
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(1)  # (N, width)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds a fixed sin/cos code of each cell's binned position, in 2-D or 3-D.

    Coordinates are expected in [0, 1] (normalised per cell set) and binned to ``grid_size``
    positions per axis. The code concatenates one block per axis, last axis first, each of width
    ``2 * (dim // (2 * n_axes))`` (zero-padded to ``dim``); in 2-D this is exactly the official
    ``Sinusoidal2dPE`` table. Cells without coordinates get the learned ``missing`` vector.
    """

    def __init__(self, dim: int, grid_size: int = 100):
        super().__init__()
        self.dim = dim
        self.grid_size = grid_size
        self.missing = nn.Parameter(torch.randn(dim) * 1e-2)

    def forward(self, coords: torch.Tensor | None, n_cells: int) -> torch.Tensor:
        if coords is None:
            return self.missing.expand(n_cells, -1)
        if coords.ndim != 2 or coords.shape[1] not in (2, 3):
            raise ValueError(f"coordinates must have shape (n_cells, 2 or 3), got {tuple(coords.shape)}")
        bins = ((coords * 1.02 - 0.01) * self.grid_size).long().clamp(0, self.grid_size - 1)  # (N, axes)
        width = 2 * (self.dim // (2 * coords.shape[1]))
        codes = [axis_codes(bins[:, a], width) for a in reversed(range(coords.shape[1]))]
        out = torch.cat(codes, dim=1).to(self.missing.dtype)
        return torch.nn.functional.pad(out, (0, self.dim - out.shape[1]))
