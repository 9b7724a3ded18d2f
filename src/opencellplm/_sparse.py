"""Building torch CSR tensors without per-call warnings."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import torch

#: ``warnings.catch_warnings`` swaps the process's filter list: two threads (cell sets built ahead on a GPU run)
#: entering and leaving it interleaved could leave a filter behind or drop one, so they take turns.
_WARNINGS_LOCK = threading.Lock()


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape, device=None) -> torch.Tensor:
    """A CSR tensor from canonical components (sorted, in range: invariant checks are skipped)."""
    with _WARNINGS_LOCK, warnings.catch_warnings():  # torch labels every CSR tensor "beta"; we use its stable core only
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=tuple(shape), device=device, check_invariants=False)


def scipy_to_torch_csr(x, device=None, *, pinned: bool = False) -> torch.Tensor:
    """A torch CSR tensor (int64 indices) holding a scipy CSR matrix; ``pinned``: on the CPU in page-locked memory,
    to be copied to a GPU without blocking (the casts write straight into it)."""
    x.sort_indices()
    if not pinned:
        return csr_tensor(
            torch.from_numpy(x.indptr.astype(np.int64)),
            torch.from_numpy(x.indices.astype(np.int64)),
            torch.from_numpy(x.data),
            x.shape,
            device=device,
        )
    parts = [_pinned_copy(x.indptr, torch.int64), _pinned_copy(x.indices, torch.int64), _pinned_copy(x.data, None)]
    return csr_tensor(*parts, x.shape)


def _pinned_copy(array: np.ndarray, dtype: torch.dtype | None) -> torch.Tensor:
    out = torch.empty(array.shape, dtype=dtype or torch.from_numpy(array[:0]).dtype, pin_memory=True)
    out.numpy()[...] = array
    return out


def csr_to(counts: torch.Tensor, device, *, non_blocking: bool = False) -> torch.Tensor:
    """A CSR tensor moved component by component (``non_blocking`` copies from pinned memory return at once)."""
    parts = (counts.crow_indices(), counts.col_indices(), counts.values())
    return csr_tensor(*(p.to(device, non_blocking=non_blocking) for p in parts), counts.shape)
