"""Building torch CSR tensors without per-call warnings."""

from __future__ import annotations

import warnings

import numpy as np
import torch


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape, device=None) -> torch.Tensor:
    """A CSR tensor from canonical components (sorted, in range: invariant checks are skipped)."""
    with warnings.catch_warnings():  # torch labels every CSR tensor "beta"; we use its stable core only
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=tuple(shape), device=device, check_invariants=False)


def scipy_to_torch_csr(x, device=None) -> torch.Tensor:
    """A torch CSR tensor (int64 indices) holding a scipy CSR matrix."""
    x.sort_indices()
    return csr_tensor(
        torch.from_numpy(x.indptr.astype(np.int64)),
        torch.from_numpy(x.indices.astype(np.int64)),
        torch.from_numpy(x.data),
        x.shape,
        device=device,
    )
