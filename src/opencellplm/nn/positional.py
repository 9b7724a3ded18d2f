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
    half = dim // 2
    div = torch.exp(torch.arange(0.0, half, 2) * -(math.log(10000.0) / half))  # (half/2,)
    pos = torch.arange(0.0, grid_size).unsqueeze(1)  # (grid, 1)
    sin, cos = torch.sin(pos * div), torch.cos(pos * div)  # (grid, half/2)
    axis = torch.zeros(grid_size, half)
    axis[:, 0::2], axis[:, 1::2] = sin, cos  # one axis, interleaved
    i, j = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    return torch.cat([axis[j.reshape(-1)], axis[i.reshape(-1)]], dim=1)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds a fixed sin/cos code of each cell's binned (x, y) position.

    Coordinates are expected in [0, 1] (normalised per cell set); they are binned to
    ``grid_size`` positions per axis. Cells without coordinates get the learned ``missing`` vector.
    The table is a non-persistent buffer: it is regenerated, never stored in checkpoints.
    """

    def __init__(self, dim: int, grid_size: int = 100):
        super().__init__()
        self.grid_size = grid_size
        self.missing = nn.Parameter(torch.randn(dim) * 1e-2)
        self.register_buffer("table", sinusoid_table(dim, grid_size), persistent=False)

    def forward(self, coords: torch.Tensor | None, n_cells: int) -> torch.Tensor:
        if coords is None:
            return self.missing.expand(n_cells, -1)
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise ValueError(f"coordinates must have shape (n_cells, 2), got {tuple(coords.shape)}")
        bins = ((coords * 1.02 - 0.01) * self.grid_size).long().clamp(0, self.grid_size - 1)  # (N, 2)
        return self.table[bins[:, 0] * self.grid_size + bins[:, 1]]
