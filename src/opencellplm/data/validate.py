"""Checking an AnnData before any work: keys, counts, genes, cells, samples, coordinates.

:func:`validate` reads the counts once, in row blocks (so a backed file is never loaded whole), and
returns an :class:`InputReport`. Problems that make the input unusable are ``errors``; suspicious
but usable input gives ``warnings``. Nothing is written to the AnnData.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .genes import GeneAlignment, GeneIdRule, align_genes, whitespace_note
from .reader import check_readable, counts_matrix, iter_row_blocks, on_disk

logger = logging.getLogger(__name__)

N_EXAMPLES = 5  # cells or genes named in a message
#: Below this share of the counts in the vocabulary's genes, the input is unusable unless forced:
#: the embedding would rest on a handful of genes (e.g. mouse symbols against a case-sensitive
#: vocabulary matched 2 of 1,000 genes carrying 0.1% of the counts).
MIN_SHARE_OF_COUNTS = 0.05


@dataclass
class InputReport:
    """What :func:`validate` found.

    Attributes
    ----------
    n_cells, n_genes
        Shape of the input.
    source
        ``"X"`` or ``"layers['name']"``.
    backed
        Whether the counts were read from disk (block by block).
    errors, warnings
        Messages; the input is usable when ``errors`` is empty.
    n_invalid_entries
        NaN, infinite or negative entries.
    n_too_large
        Finite entries above :data:`MAX_COUNT`.
    non_integer
        Whether any stored value is not a whole number.
    empty_cells
        Rows with no counts (in the model's genes when a vocabulary was given).
    duplicate_genes
        Gene ids listed more than once.
    alignment
        Gene matching against the vocabulary (None without a vocabulary).
    share_of_counts
        Share of all counts carried by the matched genes.
    n_samples, sample_sizes
        Cells per sample (with a sample key).
    spatial_dims
        2 or 3 when coordinates were found, else None.
    cell_totals
        Per-cell total counts over the matched genes (all genes without a vocabulary).
    """

    n_cells: int
    n_genes: int
    source: str
    backed: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_invalid_entries: int = 0
    n_too_large: int = 0
    non_integer: bool = False
    empty_cells: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    duplicate_genes: list[str] = field(default_factory=list)
    alignment: GeneAlignment | None = None
    share_of_counts: float | None = None
    n_samples: int | None = None
    sample_sizes: dict[str, int] | None = None
    spatial_dims: int | None = None
    cell_totals: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        """Raise ``ValueError`` listing every error (nothing when the input is usable)."""
        if self.errors:
            raise ValueError("the input cannot be used:\n- " + "\n- ".join(self.errors))

    def to_text(self) -> str:
        """The report as lines of text, for people."""
        lines = [
            f"{self.n_cells:,} cells x {self.n_genes:,} genes, counts from {self.source}"
            + (" (backed, read in blocks)" if self.backed else "")
        ]
        if self.alignment is not None:
            a = self.alignment
            share = "" if self.share_of_counts is None else f", carrying {100 * self.share_of_counts:.1f}% of counts"
            how = [] if a.rule == "exact" else [f"ids matched by the checkpoint's rule: {a.rule}"]
            if a.n_via_aliases:
                how.append(f"{a.n_via_aliases:,} of them through the checkpoint's gene aliases")
            rule = f" ({'; '.join(how)})" if how else ""
            lines.append(
                f"genes: {a.n_matched:,} of {a.n_input:,} ({100 * a.share_of_input:.1f}%) in the vocabulary "
                f"of {a.n_vocabulary:,}{share}{rule}"
            )
        if self.n_samples is not None and self.sample_sizes:
            sizes = np.array(list(self.sample_sizes.values()))
            lines.append(
                f"samples: {self.n_samples} (cells per sample: min {sizes.min():,}, median {int(np.median(sizes)):,}, "
                f"max {sizes.max():,})"
            )
        lines.append(f"coordinates: {self.spatial_dims}-D" if self.spatial_dims else "coordinates: none")
        lines.append(
            f"cells without counts: {len(self.empty_cells):,}" + (" (left out)" if len(self.empty_cells) else "")
        )
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"error: {e}" for e in self.errors]
        lines.append("usable: yes" if self.ok else "usable: no")
        return "\n".join(lines)


def validate(
    adata: AnnData,
    *,
    layer: str | None = None,
    sample_key: str | None = None,
    spatial_key: str | None = "spatial",
    gene_key: str | None = None,
    vocabulary: Sequence[str] | None = None,
    gene_id_rule: GeneIdRule = "exact",
    gene_aliases: Mapping[str, str] | None = None,
    require_counts: bool = False,
    allow_low_overlap: bool = False,
) -> InputReport:
    """Check ``adata`` for use with a CellPLM model; see :class:`InputReport`.

    Parameters
    ----------
    layer
        Layer with raw counts (default: X).
    sample_key
        ``obs`` column of sample labels (must exist and have no missing value).
    spatial_key
        ``obsm`` key of 2-D or 3-D coordinates. The default ``"spatial"`` may be absent (the data are
        then not spatial); any other key must exist.
    gene_key
        ``var`` column with the vocabulary's gene ids (default: var_names).
    vocabulary
        The model's genes: adds the gene matching, and empty cells are judged on matched genes.
    gene_id_rule
        How the input ids are normalised before matching the vocabulary (the checkpoint's rule, see
        :mod:`opencellplm.data.genes`).
    gene_aliases
        The checkpoint's gene aliases (normalised input id -> vocabulary id), applied after the rule.
    require_counts
        Make non-integer values an error instead of a warning (tasks that model counts).
    allow_low_overlap
        Accept input whose matched genes carry less than ``MIN_SHARE_OF_COUNTS`` of the counts (a
        warning instead of an error).
    """
    require_anndata(adata)
    source = "X" if layer is None else f"layers[{layer!r}]"
    report = InputReport(n_cells=adata.n_obs, n_genes=adata.n_vars, source=source, backed=False)
    try:
        matrix = counts_matrix(adata, layer)
        check_readable(matrix, source)
    except (KeyError, ValueError) as err:
        report.errors.append(str(err.args[0]))
        return report
    report.backed = on_disk(matrix)
    if adata.n_vars == 0:
        report.errors.append("the data have no genes (n_vars = 0)")
        return report

    genes = _check_genes(adata, gene_key, report)
    _check_samples(adata, sample_key, report)
    _check_coordinates(adata, spatial_key, report)
    source = f"var[{gene_key!r}]" if gene_key else "var_names"
    if genes is not None and vocabulary is None and (note := whitespace_note(genes, source)):
        report.warnings.append(note)  # with a vocabulary, the alignment's warnings say it (and what it costs)
    if genes is not None and vocabulary is not None:
        try:
            report.alignment = align_genes(genes, vocabulary, source=source, rule=gene_id_rule, aliases=gene_aliases)
            report.warnings += report.alignment.warnings
        except ValueError as err:
            report.errors.append(str(err))
    _scan_counts(adata, matrix, report, require_counts)
    _check_share_of_counts(report, allow_low_overlap)
    return report


def _check_share_of_counts(report: InputReport, allow_low_overlap: bool) -> None:
    share = report.share_of_counts
    if share is None or share >= MIN_SHARE_OF_COUNTS or report.alignment is None:
        return
    a = report.alignment
    message = (
        f"the {a.n_matched:,} gene(s) found in the vocabulary carry only {100 * share:.2f}% of the counts, too few "
        "for a meaningful embedding; check that the gene ids are of the vocabulary's kind (symbols or Ensembl ids, "
        "same case, same species naming) or pass gene_key= naming a var column that is"
    )
    if allow_low_overlap:
        report.warnings.append(message + " (accepted: allow_low_overlap)")
    else:
        report.errors.append(message + ", or allow_low_overlap=True (--allow-low-overlap) to go on anyway")


def _check_genes(adata: AnnData, gene_key: str | None, report: InputReport) -> list[str] | None:
    if gene_key is None:
        genes = [str(g) for g in adata.var_names]
    elif gene_key not in adata.var:
        report.errors.append(f"var column {gene_key!r} not found; adata.var has {list(adata.var.columns)}")
        return None
    else:
        genes = adata.var[gene_key].astype(str).tolist()
    counts = pd.Series(genes).value_counts()
    report.duplicate_genes = sorted(counts.index[counts > 1])
    if report.duplicate_genes:
        report.warnings.append(
            f"{len(report.duplicate_genes)} gene id(s) appear more than once, "
            f"e.g. {report.duplicate_genes[:N_EXAMPLES]}; each column is embedded separately "
            "(sum duplicates first to treat them as one gene)"
        )
    return genes


def _check_samples(adata: AnnData, sample_key: str | None, report: InputReport) -> None:
    if sample_key is None:
        return
    if sample_key not in adata.obs:
        report.errors.append(f"obs column {sample_key!r} not found; adata.obs has {list(adata.obs.columns)}")
        return
    samples = adata.obs[sample_key]
    missing = samples.isna().to_numpy()
    if missing.any():
        names = list(adata.obs_names[missing][:N_EXAMPLES])
        report.errors.append(f"{int(missing.sum())} cells have no {sample_key!r} label, e.g. {names}")
    sizes = samples[~missing].astype(str).value_counts().sort_index()
    report.n_samples = len(sizes)
    report.sample_sizes = {str(k): int(v) for k, v in sizes.items()}


def _check_coordinates(adata: AnnData, spatial_key: str | None, report: InputReport) -> None:
    if spatial_key is None:
        return
    if spatial_key not in adata.obsm:
        if spatial_key != "spatial":
            report.errors.append(f"obsm key {spatial_key!r} not found; adata.obsm has {list(adata.obsm.keys())}")
        return
    try:
        coords = coordinates(adata, spatial_key)
    except ValueError as err:
        report.errors.append(str(err))
        return
    report.spatial_dims = coords.shape[1]


def coordinates(adata: AnnData, spatial_key: str) -> np.ndarray:
    """``obsm[spatial_key]`` as a float64 (n_obs, 2 or 3) array; refuses missing or non-finite values."""
    coords = np.asarray(adata.obsm[spatial_key])
    if coords.ndim != 2 or coords.shape[1] not in (2, 3) or not np.issubdtype(coords.dtype, np.number):
        raise ValueError(
            f"obsm[{spatial_key!r}] must be numeric with 2 or 3 columns, got {coords.dtype} {tuple(coords.shape)}"
        )
    coords = coords.astype(np.float64)
    bad = ~np.isfinite(coords).all(1)
    if bad.any():
        names = list(adata.obs_names[bad][:N_EXAMPLES])
        raise ValueError(
            f"obsm[{spatial_key!r}] has NaN or infinite coordinates for {int(bad.sum())} cells, e.g. {names}"
        )
    return coords


#: Largest value accepted as a count. Real counts stay far below it (a whole cell holds about 1e3 to 1e6 UMIs
#: or reads), so larger values are not raw counts; near the float32 maximum (3.4e38) they would also overflow
#: when summed. Below it, a cell's total over even a million genes stays far inside float32.
MAX_COUNT = 1e9


def _scan_counts(adata: AnnData, matrix, report: InputReport, require_counts: bool) -> None:
    """One pass over the counts: invalid and too large entries, non-integers, per-cell totals (summed in float64)."""
    columns = None if report.alignment is None else report.alignment.columns
    matched_mask = None
    if columns is not None and len(columns) < adata.n_vars:  # else every column counts
        matched_mask = np.zeros(adata.n_vars, dtype=bool)
        matched_mask[columns] = True
    totals = np.zeros(adata.n_obs)
    all_counts = matched_counts = 0.0
    bad_cells: list[int] = []
    large_cells: list[int] = []
    largest = 0.0
    for start, block in iter_row_blocks(matrix, adata.n_obs, adata.n_vars, views=True):  # read only
        data = block.data
        low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
        if not (low >= 0 and high <= MAX_COUNT):  # NaN fails both; the masks are made only for such a block
            invalid = ~np.isfinite(data) | (data < 0)
            too_large = np.isfinite(data) & (data > MAX_COUNT)
            report.n_invalid_entries += int(invalid.sum())
            report.n_too_large += int(too_large.sum())
            largest = max(largest, float(data[too_large].max(initial=0)))
            _add_first_cells(bad_cells, block, start, invalid)
            _add_first_cells(large_cells, block, start, too_large)
            continue  # totals of such a block are meaningless (or overflow); the input is refused anyway
        report.non_integer = report.non_integer or bool(np.any(data != np.round(data)))
        cell_all = _row_sums(data, block.indptr)
        cell_matched = cell_all if matched_mask is None else _row_sums(data * matched_mask[block.indices], block.indptr)
        totals[start : start + block.shape[0]] = cell_matched
        all_counts += cell_all.sum()
        matched_counts += cell_matched.sum()
    report.cell_totals = totals
    if report.n_invalid_entries:
        names = list(adata.obs_names[bad_cells])
        report.errors.append(
            f"{report.source} has {report.n_invalid_entries:,} NaN, infinite or negative entries, first in cells "
            f"{names}; CellPLM needs raw counts"
        )
    if report.n_too_large:
        names = list(adata.obs_names[large_cells])
        report.errors.append(
            f"{report.source} has {report.n_too_large:,} entries above {MAX_COUNT:.0e} (the largest {largest:.3g}), "
            f"first in cells {names}; no real count is this large (a whole cell holds about 1e3 to 1e6): CellPLM needs "
            "raw counts, pass layer= naming them or rebuild the matrix from the count files"
        )
    if report.n_invalid_entries or report.n_too_large:
        return
    if report.non_integer:
        message = (
            f"{report.source} holds non-integer values, so it is not raw counts; pass layer= naming a layer of raw "
            "counts (e.g. one saved before normalisation)"
        )
        (report.errors if require_counts else report.warnings).append(message)
    if columns is not None and all_counts > 0:
        report.share_of_counts = matched_counts / all_counts
    report.empty_cells = np.flatnonzero(totals == 0)
    if len(report.empty_cells) == adata.n_obs and adata.n_obs:
        report.errors.append("no cell has any count" + (" in the model's genes" if columns is not None else ""))
    if len(report.empty_cells):
        logger.info(
            "%d cells have no counts%s", len(report.empty_cells), " in the model's genes" if columns is not None else ""
        )


def _row_sums(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Each CSR row's sum of ``values`` (its stored values, or weights of them), accumulated in float64."""
    out = np.zeros(len(indptr) - 1)
    filled = np.flatnonzero(np.diff(indptr))
    if filled.size:  # each segment runs to the next filled row's start: the end of its own row
        out[filled] = np.add.reduceat(values, indptr[filled] - indptr[0], dtype=np.float64)
    return out


def _add_first_cells(cells: list[int], block, start: int, flagged: np.ndarray) -> None:
    """Extend ``cells`` (up to N_EXAMPLES) with the rows of a CSR ``block`` starting at row ``start`` that hold
    a ``flagged`` stored value."""
    if len(cells) < N_EXAMPLES and flagged.any():
        rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))[flagged]
        cells.extend((start + np.unique(rows))[: N_EXAMPLES - len(cells)].tolist())


def empty_cells_note(adata: AnnData, report: InputReport, consequence: str) -> str | None:
    """A sentence on the cells without counts (None when there are none), ending with ``consequence``."""
    if not len(report.empty_cells):
        return None
    names = list(adata.obs_names[report.empty_cells[:N_EXAMPLES]])
    where = " in the model's genes" if report.alignment is not None else ""
    return f"{len(report.empty_cells):,} cells have no counts{where}, e.g. {names}; {consequence}"


def require_anndata(adata) -> None:
    """Raise ``TypeError`` saying how to make an AnnData when ``adata`` is a path, an array or anything else."""
    if isinstance(adata, AnnData):
        return
    if isinstance(adata, str | os.PathLike):
        raise TypeError(
            f"expected an AnnData, got the path {str(adata)!r}; read it first with anndata.read_h5ad(path) (or "
            "'with opencellplm.data.open_h5ad(path) as adata:', which keeps the counts on disk), or embed the file "
            "with CellPLM.embed_file(path, out)"
        )
    if isinstance(adata, np.ndarray | pd.DataFrame) or sp.issparse(adata):
        raise TypeError(
            f"expected an AnnData, got a {type(adata).__name__} of shape {adata.shape}; wrap the raw counts "
            "(cells x genes) with their gene ids as var_names: "
            "anndata.AnnData(X=counts, var=pandas.DataFrame(index=gene_ids))"
        )
    raise TypeError(f"expected an AnnData of raw counts, got {type(adata).__name__}")
