"""Reading counts from AnnData: X or a layer, dense or sparse, in memory or on disk, by row blocks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

#: Rows per read when scanning a whole sparse matrix sequentially.
SCAN_ROWS = 20_000
#: Bytes of dense values read at once (dense blocks are cut to fit).
DENSE_BLOCK_BYTES = 256 * 2**20


def open_hdf5(path: str | Path):
    """``h5py.File(path, "r")``, or a ``ValueError`` naming ``path`` when it is not HDF5 (a text or image file
    renamed) or was cut short."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(
            f"{path} is not a readable h5ad file ({err}): it is another format named .h5ad, or was cut short by an "
            "incomplete download or copy; fetch or write it again (adata.write_h5ad(...))"
        ) from err


@contextmanager
def open_h5ad(path: str | Path) -> Iterator[AnnData]:
    """An h5ad file as an AnnData whose X and layers stay on disk (read block by block).

    ``anndata.read_h5ad(backed="r")`` keeps only X on disk and loads every layer; this keeps all
    count matrices on disk and loads ``obs``, ``var`` and ``obsm`` only. The file closes on exit.
    A file that is not HDF5 (or is cut short), or has no ``obs`` or ``var``, raises ``ValueError`` naming it.
    """
    import h5py
    from anndata.io import read_elem, sparse_dataset

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")

    def lazy(element):
        return element if isinstance(element, h5py.Dataset) else sparse_dataset(element)

    with open_hdf5(path) as f:
        _require_anndata(f, path)
        obs, var = read_elem(f["obs"]), read_elem(f["var"])
        layers = {name: lazy(f["layers"][name]) for name in f["layers"]} if "layers" in f else {}
        yield AnnData(
            X=lazy(f["X"]) if "X" in f else None,
            obs=obs,
            var=var,
            obsm=read_elem(f["obsm"]) if "obsm" in f else None,
            layers=layers,
        )


def read_h5ad(path: str | Path) -> AnnData:
    """``anndata.read_h5ad(path)`` (everything in memory), with :func:`open_h5ad`'s errors naming ``path`` for a
    file that is missing, not HDF5 or not an AnnData."""
    import anndata

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with open_hdf5(path) as f:
        _require_anndata(f, path)
    return anndata.read_h5ad(path)


def _require_anndata(f, path: Path) -> None:
    missing = [name for name in ("obs", "var") if name not in f]
    if missing:
        raise ValueError(
            f"{path} is an HDF5 file but not an AnnData h5ad: it has no {' or '.join(missing)} "
            f"(top-level entries: {sorted(f.keys())}); write it with anndata (adata.write_h5ad(...))"
        )


def on_disk(matrix) -> bool:
    """Whether ``matrix`` is read from a file (h5py dataset or anndata's sparse dataset)."""
    return not isinstance(matrix, np.ndarray | sp.spmatrix | sp.sparray)


def block_rows(matrix, n_cols: int, sparse_rows: int = SCAN_ROWS) -> int:
    """Rows per read: ``sparse_rows`` for sparse storage; for dense, what fits ``DENSE_BLOCK_BYTES``."""
    if _is_sparse(matrix):
        return sparse_rows
    itemsize = np.dtype(getattr(matrix, "dtype", np.float32)).itemsize
    return max(1, min(sparse_rows, DENSE_BLOCK_BYTES // max(n_cols * itemsize, 1)))


def _is_sparse(matrix) -> bool:
    return sp.issparse(matrix) or hasattr(matrix, "format")  # anndata's on-disk sparse datasets have .format


def check_readable(matrix, where: str) -> None:
    """Refuse on-disk CSC: each block of rows would read the whole matrix."""
    if on_disk(matrix) and getattr(matrix, "format", None) == "csc":
        raise ValueError(
            f"{where} is stored on disk as CSC, which cannot be read by rows without loading it whole; "
            "rewrite it as CSR (adata.X = adata.X.tocsr(); adata.write_h5ad(...)) or load it into memory"
        )


def counts_matrix(adata: AnnData, layer: str | None):
    """``adata.X`` or ``adata.layers[layer]`` (for a backed file, X stays on disk); sparse float16 counts come
    as float32 (see :func:`float16_as_float32`)."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer= naming the layer with raw counts")
        return float16_as_float32(adata.X)
    if layer not in adata.layers:
        raise KeyError(f"layer {layer!r} not found; adata.layers has {sorted(adata.layers.keys())}")
    return float16_as_float32(adata.layers[layer])


def float16_as_float32(matrix):
    """A sparse float16 matrix, which scipy cannot slice, as float32: in memory, a float32 copy; on disk (CSR),
    a reader that converts each block of rows. Other matrices come back as they are (dense float16 is converted
    block by block when read)."""
    if not _is_sparse(matrix) or np.dtype(matrix.dtype) != np.float16:
        return matrix
    if not on_disk(matrix):
        return matrix.astype(np.float32)
    if matrix.format != "csr":
        return matrix  # on-disk CSC is refused by check_readable
    return _Float16CSRDataset(matrix)


class _Float16CSRDataset:
    """Rows of anndata's on-disk float16 CSR dataset as float32 CSR (anndata's own reading goes through scipy,
    which has no float16). Takes a slice or an array of rows; runs of consecutive rows are read in one go."""

    format = "csr"
    dtype = np.dtype(np.float32)

    def __init__(self, dataset):
        self.shape = dataset.shape
        self._data, self._indices = dataset.group["data"], dataset.group["indices"]
        self._indptr = dataset.group["indptr"][...]

    def __getitem__(self, rows: slice | np.ndarray) -> sp.csr_matrix:
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.shape[0])
            if step != 1:
                raise IndexError("rows must be a slice with step 1 or an array of row numbers")
            return self._run(start, stop)
        rows = np.asarray(rows)
        if not len(rows):
            return sp.csr_matrix((0, self.shape[1]), dtype=np.float32)
        runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)
        return sp.vstack([self._run(int(run[0]), int(run[-1]) + 1) for run in runs], format="csr")

    def _run(self, start: int, stop: int) -> sp.csr_matrix:
        lo, hi = self._indptr[start], self._indptr[stop]
        data = self._data[lo:hi].astype(np.float32)
        indptr = self._indptr[start : stop + 1] - lo
        return sp.csr_matrix((data, self._indices[lo:hi], indptr), shape=(stop - start, self.shape[1]))


def read_rows(matrix, rows: np.ndarray, columns: np.ndarray | None = None) -> sp.csr_matrix:
    """Rows ``rows`` (any order) and optionally ``columns`` of a matrix, as float32 CSR.

    Works on numpy arrays, scipy matrices, h5py datasets and anndata's backed sparse datasets. In memory the rows
    are copied in the order asked; from disk they are read in increasing order (what backed storage needs) and put
    back in the order asked.
    """
    rows = np.asarray(rows)
    matrix = float16_as_float32(matrix)
    if not on_disk(matrix):
        block = _as_csr(matrix[rows])
        return block if columns is None else select_columns(block, np.asarray(columns))
    order = np.argsort(rows, kind="stable")
    block = _read_sorted(matrix, rows[order])
    if columns is not None:
        block = select_columns(block, np.asarray(columns))
    if not np.all(order[:-1] <= order[1:]):  # not already in increasing order
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        block = block[inverse]
    return block


def select_columns(block: sp.csr_matrix, columns: np.ndarray) -> sp.csr_matrix:
    """``block[:, columns]`` as float32 CSR, and ``block`` itself when ``columns`` are all of its columns in order
    (an input holding exactly the model's genes): selecting every column of a large matrix copies all its values
    for nothing."""
    n_cols = block.shape[1]
    if len(columns) == n_cols and np.array_equal(columns, np.arange(n_cols)):
        return block
    return sp.csr_matrix(block[:, columns], dtype=np.float32)


def iter_row_blocks(matrix, n_rows: int, n_cols: int, *, views: bool = False) -> Iterator[tuple[int, sp.csr_matrix]]:
    """``(start, a block of rows from start as float32 CSR)`` over the whole matrix, in order.

    ``views=True``: blocks of an in-memory float32 CSR matrix share its arrays instead of copying them, for a caller
    that only reads them (a copy of 63M values costs more than the checks made on them)."""
    matrix = float16_as_float32(matrix)
    step = block_rows(matrix, n_cols)
    shared = views and sp.issparse(matrix) and matrix.format == "csr" and matrix.dtype == np.float32
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        if shared:
            lo, hi = matrix.indptr[start], matrix.indptr[stop]
            data, indices = matrix.data[lo:hi], matrix.indices[lo:hi]
            block = sp.csr_matrix((data, indices, matrix.indptr[start : stop + 1] - lo), shape=(stop - start, n_cols))
            block.data, block.indices = data, indices  # scipy copies a view of a much larger array: keep the view
            block.indptr = block.indptr.astype(indices.dtype, copy=False)  # one index dtype, as scipy expects
            yield start, block
        else:
            yield start, _as_csr(matrix[start:stop])


def _read_sorted(matrix, sorted_rows: np.ndarray) -> sp.csr_matrix:
    if len(sorted_rows) and sorted_rows[-1] - sorted_rows[0] + 1 == len(sorted_rows):
        return _as_csr(matrix[int(sorted_rows[0]) : int(sorted_rows[-1]) + 1])  # contiguous: one slice
    return _as_csr(matrix[sorted_rows])


def _as_csr(block) -> sp.csr_matrix:
    if sp.issparse(block):
        return sp.csr_matrix(block, dtype=np.float32)
    return sp.csr_matrix(np.asarray(block, dtype=np.float32))
