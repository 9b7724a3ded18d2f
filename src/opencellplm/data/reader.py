"""Reading counts from AnnData: X or a layer, dense or sparse, in memory or backed, by row blocks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

#: Rows per read when scanning a whole matrix sequentially.
SCAN_ROWS = 20_000


def counts_matrix(adata: AnnData, layer: str | None):
    """``adata.X`` or ``adata.layers[layer]`` (for a backed file, X stays on disk)."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer= naming the layer with raw counts")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"layer {layer!r} not found; adata.layers has {sorted(adata.layers.keys())}")
    return adata.layers[layer]


def read_rows(matrix, rows: np.ndarray, columns: np.ndarray | None = None) -> sp.csr_matrix:
    """Rows ``rows`` (any order) and optionally ``columns`` of a matrix, as float32 CSR.

    Works on numpy arrays, scipy matrices, h5py datasets and anndata's backed sparse datasets; the
    rows are read in increasing order (what backed storage needs) and put back in the order asked.
    """
    rows = np.asarray(rows)
    order = np.argsort(rows, kind="stable")
    block = _read_sorted(matrix, rows[order])
    if columns is not None:
        block = block[:, columns]
    if not np.all(order[:-1] <= order[1:]):  # not already in increasing order
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        block = block[inverse]
    return block


def iter_row_blocks(matrix, n_rows: int, block_rows: int = SCAN_ROWS) -> Iterator[tuple[int, sp.csr_matrix]]:
    """``(start, rows start..start+block_rows as float32 CSR)`` over the whole matrix, in order."""
    for start in range(0, n_rows, block_rows):
        stop = min(start + block_rows, n_rows)
        yield start, _as_csr(matrix[start:stop])


def _read_sorted(matrix, sorted_rows: np.ndarray) -> sp.csr_matrix:
    if len(sorted_rows) and sorted_rows[-1] - sorted_rows[0] + 1 == len(sorted_rows):
        return _as_csr(matrix[int(sorted_rows[0]) : int(sorted_rows[-1]) + 1])  # contiguous: one slice
    return _as_csr(matrix[sorted_rows])


def _as_csr(block) -> sp.csr_matrix:
    if sp.issparse(block):
        return sp.csr_matrix(block, dtype=np.float32)
    return sp.csr_matrix(np.asarray(block, dtype=np.float32))
