"""THE path from an AnnData to model inputs: checked once, cut into cell sets, read set by set.

:class:`InputSpec` says where the input sits in an AnnData and how its cells are grouped (the
keywords every task takes); :class:`CellSets` applies it to one AnnData and a vocabulary: it
validates the input once (:func:`~opencellplm.data.validate`), builds the cell sets
(:func:`~opencellplm.data.cell_sets`) and yields each set's rows with its
:class:`~opencellplm.module.CellBatch`, reading a backed file in blocks of sets. Embedding and every
task's ``fit`` / ``predict`` iterate it; per-cell targets (labels, masks) are indexed by the rows. A task that
needs the counts themselves reads them here (:meth:`CellSets.counts`), and a task that trains on altered counts
(entries hidden for validation) reads the same sets over them (:meth:`CellSets.with_counts`), checked and cut once.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData

from .._sparse import csr_to, scipy_to_torch_csr
from ..module import CellBatch
from .cellsets import Partition, cell_sets, normalize_coordinates
from .genes import GeneIdRule
from .prefetch import prefetched
from .reader import _is_sparse, block_rows, counts_matrix, iter_row_blocks, on_disk, read_rows
from .validate import InputReport, coordinates, empty_cells_note, validate

logger = logging.getLogger(__name__)

#: Default cap on a cell set: the official pretraining's ``max_batch_size``; it also bounds memory.
DEFAULT_MAX_CELLS = 4000
#: Cells read from the counts at once (several sets share one read of a backed file).
READ_BLOCK_CELLS = 65_536


@dataclass(frozen=True)
class InputSpec:
    """Where a model's input sits in an AnnData, and how its cells are grouped into sets.

    Attributes
    ----------
    layer
        Layer with raw counts (default ``X``).
    gene_key
        ``var`` column with the vocabulary's gene ids (default: ``var_names``); ids are normalised
        by the checkpoint's rule before matching.
    sample_key
        ``obs`` column grouping cells that attend to each other (default: all cells, one sample).
    spatial_key
        ``obsm`` key of 2-D or 3-D coordinates, used when present: large samples are cut into
        spatial tiles and models with a positional encoding encode them. None ignores coordinates.
    max_cells
        Largest cell set; larger samples are split. ``"auto"``: 4000 (with ``official_compat``:
        None, whole samples). None keeps samples whole.
    partition
        How to split: ``"auto"`` (tiles with coordinates, else seeded random), ``"tiles"``,
        ``"random"`` or ``"consecutive"``; None: ``"auto"`` (``"consecutive"`` with ``official_compat``).
    seed
        Seed of the random partition.
    allow_low_overlap
        Go on when the matched genes carry a negligible share of the counts.
    """

    layer: str | None = None
    gene_key: str | None = None
    sample_key: str | None = None
    spatial_key: str | None = "spatial"
    max_cells: int | None | Literal["auto"] = "auto"
    partition: Partition | None = None
    seed: int = 0
    allow_low_overlap: bool = False

    def resolved(self, *, official_compat: bool = False) -> InputSpec:
        """The spec with ``"auto"`` and None defaults replaced by the values used."""
        max_cells = self.max_cells
        if max_cells == "auto":
            max_cells = None if official_compat else DEFAULT_MAX_CELLS
        partition = self.partition or ("consecutive" if official_compat else "auto")
        return replace(self, max_cells=max_cells, partition=partition)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CellSet:
    """One cell set: its rows in the AnnData and its model input."""

    rows: np.ndarray
    batch: CellBatch


class CellSets:
    """An AnnData checked against a vocabulary and cut into cell sets.

    Parameters
    ----------
    adata
        Raw counts; in memory, backed, or opened with :func:`~opencellplm.data.open_h5ad`.
    spec
        Where the input is and how cells are grouped.
    vocabulary, gene_id_rule, gene_aliases
        The model's genes and how input ids are normalised to match them (the rule, then the aliases).
    positional
        Whether the model encodes coordinates (they are then passed, scaled to [0, 1] per set).
    official_compat
        The official pipeline's sets (whole samples, consecutive chunks) and cells without counts
        kept; no coordinates passed.
    require_counts
        Non-integer values are an error (tasks that model counts) rather than a warning.
    cells
        Boolean mask of the rows to place in sets (default: all); the others are left out.
    left_out
        What the warning about cells without counts says happens to them.
    warn_stacklevel
        ``stacklevel`` of the input warnings, so that they point at the user's call.

    Raises
    ------
    ValueError
        When the input cannot be used, listing every problem (see :class:`InputReport`).
    """

    def __init__(
        self,
        adata: AnnData,
        spec: InputSpec,
        *,
        vocabulary: Sequence[str],
        gene_id_rule: GeneIdRule = "exact",
        gene_aliases: Mapping[str, str] | None = None,
        positional: bool = False,
        official_compat: bool = False,
        require_counts: bool = False,
        cells: np.ndarray | None = None,
        left_out: str = "they are left out",
        warn_stacklevel: int = 2,
    ):
        self.adata = adata
        self.spec = spec.resolved(official_compat=official_compat)
        self.report: InputReport = validate(
            adata,
            layer=spec.layer,
            sample_key=spec.sample_key,
            spatial_key=spec.spatial_key,
            gene_key=spec.gene_key,
            vocabulary=vocabulary,
            gene_id_rule=gene_id_rule,
            gene_aliases=gene_aliases,
            require_counts=require_counts,
            allow_low_overlap=spec.allow_low_overlap,
        )
        self.report.raise_for_errors()
        consequence = "embedded anyway, as the official pipeline does" if official_compat else left_out
        for message in [*self.report.warnings, empty_cells_note(adata, self.report, consequence)]:
            if message:
                warnings.warn(message, UserWarning, stacklevel=warn_stacklevel + 1)
        self.coords = coordinates(adata, spec.spatial_key) if self.report.spatial_dims else None
        self.keep = np.ones(adata.n_obs, dtype=bool)
        if not official_compat:
            self.keep[self.report.empty_cells] = False
        if cells is not None:
            self.keep &= np.asarray(cells, dtype=bool)
        samples = None if spec.sample_key is None else adata.obs[spec.sample_key].to_numpy()
        self.sets = cell_sets(
            samples,
            adata.n_obs,
            self.spec.max_cells,
            coords=self.coords,
            keep=self.keep,
            partition=self.spec.partition,
            seed=self.spec.seed,
        )
        self._use_coords = self.coords is not None and positional and not official_compat
        self._gene_index = torch.as_tensor(self.report.alignment.gene_index)
        #: The aligned counts: read by counts(), or substituted by with_counts() (then the sets read them).
        self._counts: sp.csr_matrix | None = None
        self._substituted = False
        #: Each row's id for the decoder's batch covariate (with_batches()), or None.
        self._batch_ids: np.ndarray | None = None
        logger.info("%d cells in %d cell sets", self.n_cells, len(self.sets))

    def counts(self) -> sp.csr_matrix:
        r"""Every cell's counts in the model's genes (rows in ``adata`` order, cells outside the sets included;
        columns in the alignment's order, :attr:`report`\ ``.alignment.columns``), float32 CSR. Read once and
        kept: the whole matrix of those genes is held in memory."""
        if self._counts is None:
            matrix = counts_matrix(self.adata, self.spec.layer)
            self._counts = read_rows(matrix, np.arange(self.adata.n_obs), self.report.alignment.columns)
        return self._counts

    @property
    def input_is_sparse(self) -> bool:
        """Whether the input counts are stored sparse (in memory or on disk)."""
        return _is_sparse(counts_matrix(self.adata, self.spec.layer))

    def dense_input(self) -> np.ndarray:
        """Every input column (all genes, not only the model's) of every cell, dense float32 in ``adata``'s order,
        read in blocks of rows: ``4 * n_obs * n_vars`` bytes."""
        matrix = counts_matrix(self.adata, self.spec.layer)
        out = np.empty(self.adata.shape, dtype=np.float32)
        for start, block in iter_row_blocks(matrix, self.adata.n_obs, self.adata.n_vars):
            out[start : start + block.shape[0]] = block.toarray()
        return out

    def with_counts(self, counts) -> CellSets:
        """The same sets (cells, partition, coordinates, genes) over other counts of :meth:`counts`' shape, e.g.
        with entries hidden for validation: nothing is validated or partitioned again, and ``self`` is unchanged."""
        shape = (self.adata.n_obs, len(self.report.alignment.columns))
        if getattr(counts, "shape", None) != shape:
            raise ValueError(
                f"the counts must have the shape of counts() {shape}, got {getattr(counts, 'shape', None)}"
            )
        other = copy.copy(self)
        other._counts, other._substituted = sp.csr_matrix(counts, dtype=np.float32), True
        return other

    def subset(self, indices) -> CellSets:
        """The same input with only the sets ``indices`` (in that order), e.g. one process's share of them; ``self``
        is unchanged."""
        other = copy.copy(self)
        other.sets = [self.sets[i] for i in indices]
        return other

    def with_batches(self, ids) -> CellSets:
        """The same sets, each cell given its batch: ``ids`` holds one integer per row of ``adata`` (from 0), which
        every set's :class:`~opencellplm.module.CellBatch` carries as ``batch`` for the decoder's batch covariate.
        ``self`` is unchanged."""
        ids = np.asarray(ids)
        if ids.shape != (self.adata.n_obs,) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"batch ids must be one integer per cell ({self.adata.n_obs}), got {ids.dtype} of shape {ids.shape}"
            )
        if ids.size and ids.min() < 0:
            raise ValueError(f"batch ids must be 0 or more, got {int(ids.min())}")
        other = copy.copy(self)
        other._batch_ids = ids.astype(np.int64)
        return other

    def _batch(self, x, rows: np.ndarray, coords: torch.Tensor | None, device, *, pinned: bool = False) -> CellBatch:
        ids = None if self._batch_ids is None else torch.as_tensor(self._batch_ids[rows], device=device)
        counts = scipy_to_torch_csr(x, pinned=True) if pinned else scipy_to_torch_csr(x, device)
        return CellBatch(counts, self._gene_index.to(device), coords, batch=ids)

    @property
    def n_cells(self) -> int:
        """Cells placed in a set (cells without counts are left out)."""
        return int(self.keep.sum())

    def __len__(self) -> int:
        return len(self.sets)

    def params(self) -> dict[str, Any]:
        """The effective settings, for ``uns[...]['params']`` (h5ad stores no None: unset ones are left out)."""
        params = self.spec.to_dict()
        if not self.report.spatial_dims:
            params["spatial_key"] = None
        return {k: v for k, v in params.items() if v is not None}

    def __iter__(self) -> Iterator[CellSet]:
        return self.iterate()

    def read(self, index: int, device: torch.device | str = "cpu") -> CellSet:
        """Set ``index`` alone (training reads sets in its own order, one at a time)."""
        rows = self.sets[index]
        if self._substituted:
            x = read_rows(self._counts, rows)
        else:
            x = read_rows(counts_matrix(self.adata, self.spec.layer), rows, self.report.alignment.columns)
        return CellSet(rows, self._batch(x, rows, self._coords(rows, device), device))

    def _coords(self, rows: np.ndarray, device: torch.device | str) -> torch.Tensor | None:
        if not self._use_coords:
            return None
        return torch.as_tensor(normalize_coordinates(self.coords[rows]), dtype=torch.float32).to(device)

    def iterate(self, device: torch.device | str = "cpu", *, prefetch: bool | None = None) -> Iterator[CellSet]:
        """Each set, in order, with its input on ``device``; the counts are read set by set (in memory) or in blocks
        of sets (from disk).

        ``prefetch`` (default: on any device but the CPU, whose cores the forward already uses) builds the next
        set's input on a background thread while the caller works on this one; on CUDA it is staged in pinned
        memory and copied without blocking."""
        device = torch.device(device)
        prefetch = device.type != "cpu" if prefetch is None else prefetch
        pinned = prefetch and device.type == "cuda"
        if device.type == "cpu" and not prefetch:
            yield from self._host_sets()
            return
        gene_index = self._gene_index.to(device)
        stream = prefetched(self._host_sets(pinned=pinned)) if prefetch else self._host_sets()
        try:
            for cell_set in stream:
                yield CellSet(cell_set.rows, _moved(cell_set.batch, gene_index, device, non_blocking=pinned))
        finally:
            stream.close()  # closing this iterator stops the thread building sets ahead

    def _host_sets(self, *, pinned: bool = False) -> Iterator[CellSet]:
        """Each set with its input on the CPU (``pinned``: in page-locked memory)."""
        matrix = self._counts if self._substituted else counts_matrix(self.adata, self.spec.layer)
        columns = None if self._substituted else self.report.alignment.columns
        if not on_disk(matrix):  # in memory: each set's rows copied once, straight from the matrix
            for rows in self.sets:
                x = read_rows(matrix, rows, columns)
                yield CellSet(rows, self._batch(x, rows, self._coords(rows, "cpu"), "cpu", pinned=pinned))
            return
        block_cells = block_rows(matrix, self.adata.n_vars, READ_BLOCK_CELLS)
        for rows_read, group, block in _read_in_blocks(matrix, self.sets, columns, block_cells):
            for rows in group:
                x = block if rows_read is None else block[np.searchsorted(rows_read, rows)]
                yield CellSet(rows, self._batch(x, rows, self._coords(rows, "cpu"), "cpu", pinned=pinned))


def _moved(batch: CellBatch, gene_index: torch.Tensor, device: torch.device, *, non_blocking: bool) -> CellBatch:
    """``batch`` on ``device`` with ``gene_index`` (already there)."""
    moved = {k: v.to(device, non_blocking=non_blocking) for k, v in batch.per_cell().items()}
    return CellBatch(csr_to(batch.counts, device, non_blocking=non_blocking), gene_index, **moved)


def _read_in_blocks(matrix, sets: list[np.ndarray], columns: np.ndarray, block_cells: int):
    """Yield ``(sorted rows of the block, its sets, their counts)``, read in one go: consecutive sets are
    grouped up to ``block_cells`` cells. A set alone comes as ``(None, [set], counts in set order)``."""
    group: list[np.ndarray] = []
    size = 0
    for rows in [*sets, None]:
        if rows is not None and (not group or size + len(rows) <= block_cells):
            group.append(rows)
            size += len(rows)
            continue
        if len(group) == 1:
            yield None, group, read_rows(matrix, group[0], columns)
        elif group:
            block = np.sort(np.concatenate(group))
            yield block, group, read_rows(matrix, block, columns)
        group, size = ([rows], len(rows)) if rows is not None else ([], 0)
