"""A pretraining corpus from a TileDB-SOMA experiment: a local one, or the CELLxGENE Census.

:func:`prepare_corpus_from_soma` writes the corpus :func:`~opencellplm.data.corpus.prepare_corpus` writes from h5ad
files, from the cells an ``obs`` query selects. A data set of the corpus is one value of ``dataset_key`` (the
Census's ``dataset_id``), or the whole query. Its genes are the measurement's genes (``var[gene_key]``) that hold a
count in at least one of its cells, in ``var`` order: a SOMA experiment stores one gene axis for all its data sets,
and a gene a data set never measured reads as zero there. The counts are read twice in blocks of cells, so memory
is bounded by a block (and a shard), not by the query:

1. the plan: per data set, its genes, its empty cells (left out, as from h5ad files), its cell sets (the same
   :func:`~opencellplm.data.cellsets.cell_sets` on the data set's cells in ``soma_joinid`` order) and each set's shard;
2. the shards, each written whole or not at all.

Both go to a work folder beside the output (``.NAME.soma-work``). A run killed in step 2 and started again with the
same settings keeps the plan and the shards already written and writes the rest; one with other settings starts
over. The work folder becomes the corpus when every shard is written.

Needs ``tiledbsoma`` (``pip install 'opencellplm[soma]'``); the Census needs ``cellxgene-census`` too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from .._files import check_output_directory, new_folders_removed_on_failure, output_lock, sha256_of, write_directory
from .cellsets import cell_sets
from .corpus import StoredSet, corpus_problems, shard_entry, write_manifest, write_shard
from .genes import gene_list_problems, is_control_probe
from .validate import MAX_COUNT

logger = logging.getLogger(__name__)

WORK_FORMAT = "opencellplm-soma-corpus-work-1"
SOMA_EXTRA = "pip install 'opencellplm[soma]'"


def _tiledbsoma():
    try:
        import tiledbsoma
    except ImportError as err:
        raise ImportError(f"reading a SOMA experiment needs tiledbsoma: {SOMA_EXTRA}") from err
    return tiledbsoma


#: The Census's table of which genes each data set measured (rows: data sets, columns: var soma_joinids).
PRESENCE = "feature_dataset_presence_matrix"


@contextlib.contextmanager
def open_experiment(uri: str | Path | None = None, *, census: str | None = None, organism: str = "homo_sapiens"):
    """The SOMA experiment at ``uri``, or the CELLxGENE Census release ``census`` (its ``organism`` experiment),
    opened for reading; a clear error when there is none."""
    with open_source(uri, census=census, organism=organism) as (experiment, _):
        yield experiment


@contextlib.contextmanager
def open_source(uri: str | Path | None = None, *, census: str | None = None, organism: str = "homo_sapiens"):
    """:func:`open_experiment`'s experiment and, for the Census, the row of each ``dataset_id`` in its presence
    matrix (:data:`PRESENCE`; None for other experiments)."""
    if (uri is None) == (census is None):
        raise ValueError("give either a SOMA experiment's URI or a Census release (census=...), not both")
    if census is not None:
        try:
            import cellxgene_census
        except ImportError as err:
            raise ImportError("the CELLxGENE Census needs cellxgene-census: pip install 'opencellplm[census]'") from err
        with cellxgene_census.open_soma(census_version=census) as root:
            data = root["census_data"]
            if organism not in data:
                raise ValueError(f"Census {census} has no {organism!r}; it has {sorted(data.keys())}")
            table = root["census_info"]["datasets"].read(column_names=["soma_joinid", "dataset_id"]).concat()
            rows = dict(zip(table["dataset_id"].to_pylist(), table["soma_joinid"].to_pylist()))
            yield data[organism], rows
        return
    tiledbsoma = _tiledbsoma()
    uri = str(uri)
    try:
        handle = tiledbsoma.open(uri, mode="r")
    except tiledbsoma.DoesNotExistError:
        raise FileNotFoundError(f"no SOMA experiment at {uri}") from None
    except tiledbsoma.SOMAError as err:
        raise ValueError(f"{uri} cannot be opened as a SOMA object: {err}") from None
    with handle:
        if not isinstance(handle, tiledbsoma.Experiment):
            raise ValueError(f"{uri} is a SOMA {type(handle).__name__}, not an Experiment")
        yield handle, None


def _measured(ms, presence_rows: dict[str, int] | None, label: str, n_var: int) -> np.ndarray | None:
    """The genes data set ``label`` measured, per the Census's presence matrix, as a mask over var; None where
    there is no such record."""
    if presence_rows is None or label not in presence_rows or PRESENCE not in ms:
        return None
    table = ms[PRESENCE].read(coords=(np.array([presence_rows[label]], dtype=np.int64),)).tables().concat()
    mask = np.zeros(n_var, dtype=bool)
    mask[table["soma_dim_1"].to_numpy()[table["soma_data"].to_numpy().astype(bool)]] = True
    return mask


@dataclass
class _Query:
    """What the checks found: the cells (``obs`` rows the filter selects, by ``soma_joinid``) and the genes."""

    obs: pd.DataFrame  # soma_joinid and the key columns, in soma_joinid order
    genes: np.ndarray  # var[gene_key] per var soma_joinid (str)
    n_var: int
    has_spatial: bool
    stamp: dict[str, Any]


def _check_query(experiment, *, measurement, layer, gene_key, obs_filter, keys, spatial_key) -> _Query:
    """Every check that needs no counts: the measurement, the layer, the columns, the filter. Raises before work."""
    if measurement not in experiment.ms:
        raise ValueError(f"measurement {measurement!r} not found; the experiment has {sorted(experiment.ms.keys())}")
    ms = experiment.ms[measurement]
    layers = sorted(ms.X.keys()) if "X" in ms else []
    if layer not in layers:
        raise ValueError(f"X layer {layer!r} not found in measurement {measurement!r}; it has {layers}")
    var_columns = list(ms.var.keys())
    if gene_key not in var_columns:
        raise ValueError(f"var column {gene_key!r} not found; measurement {measurement!r} has {var_columns}")
    obs_columns = list(experiment.obs.keys())
    for key in keys:
        if key is not None and key not in obs_columns:
            raise ValueError(f"obs column {key!r} not found; the experiment's obs has {obs_columns}")
    var = ms.var.read(column_names=["soma_joinid", gene_key]).concat().to_pandas()
    n_var = int(var["soma_joinid"].max()) + 1 if len(var) else 0
    genes = np.full(n_var, "", dtype=object)
    genes[var["soma_joinid"].to_numpy()] = var[gene_key].astype(str).to_numpy()
    problems = gene_list_problems(list(var[gene_key].astype(str)), first_line=0)
    if problems:
        raise ValueError(f"var[{gene_key!r}] cannot be gene ids: " + "; ".join(problems[:3]).replace("line", "gene"))
    columns = ["soma_joinid", *dict.fromkeys(k for k in keys if k is not None)]
    try:
        obs = experiment.obs.read(value_filter=obs_filter, column_names=columns).concat().to_pandas()
    except Exception as err:  # noqa: BLE001  tiledbsoma raises several types for a filter it cannot parse
        raise ValueError(f"the obs filter {obs_filter!r} cannot be applied: {err}") from None
    if len(obs) == 0:
        raise ValueError(
            f"the obs filter {obs_filter!r} selects no cell" if obs_filter else "the experiment has no cell"
        )
    obs = obs.sort_values("soma_joinid", kind="stable").reset_index(drop=True)
    for key in dict.fromkeys(k for k in keys if k is not None):
        missing = obs[key].isna()
        if missing.any():
            raise ValueError(f"{int(missing.sum())} selected cells have no {key!r} label")
    X = ms.X[layer]
    stamp = {  # what the work folder's plan depends on, besides the settings
        "cells_sha256": sha256_of_array(obs["soma_joinid"].to_numpy()),
        "genes_sha256": sha256_of_array(genes.astype(str)),
        "nnz": int(X.nnz),
    }
    has_spatial = spatial_key is not None and "obsm" in ms and spatial_key in ms.obsm
    return _Query(obs, genes, n_var, has_spatial, stamp)


def sha256_of_array(values: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def _blocks(joinids: np.ndarray, block_cells: int) -> Iterator[np.ndarray]:
    for start in range(0, len(joinids), block_cells):
        yield joinids[start : start + block_cells]


def _read_block(X, joinids: np.ndarray, n_var: int, columns: np.ndarray | None = None) -> sp.csr_matrix:
    """Rows ``joinids`` (ascending) of the SOMA matrix ``X`` as a CSR of its values' dtype: (len(joinids), n_var),
    or with ``columns`` (per var soma_joinid, its column or -1 to leave out) of ``columns.max() + 1`` columns."""
    rows, cols, vals = [], [], []
    for table in X.read(coords=(joinids,)).tables():  # unordered: a row-major read takes 3x as long here
        rows.append(table["soma_dim_0"].to_numpy())
        cols.append(table["soma_dim_1"].to_numpy())
        vals.append(table["soma_data"].to_numpy())
    width = n_var if columns is None else int(columns.max()) + 1
    shape = (len(joinids), width)
    if not rows:
        return sp.csr_matrix(shape, dtype=np.float32)
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    if columns is not None:
        cols = columns[cols]
        kept = cols >= 0
        if not kept.all():  # (copies only where a gene is left out)
            rows, cols, vals = rows[kept], cols[kept], vals[kept]
    contiguous = joinids[-1] - joinids[0] + 1 == len(joinids)  # the usual block: a data set's cells in a row
    rows = rows - joinids[0] if contiguous else np.searchsorted(joinids, rows)
    if len(rows) and (np.diff(rows) >= 0).all():  # already in row order: a CSR without sorting
        indptr = np.zeros(len(joinids) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=len(joinids)), out=indptr[1:])
        matrix = sp.csr_matrix((vals, cols, indptr), shape=shape)
    else:
        matrix = sp.coo_matrix((vals, (rows, cols)), shape=shape).tocsr()
    matrix.sum_duplicates()  # sorts each row's columns, where they were not
    return matrix


def _check_counts(values: np.ndarray, label: str) -> None:
    bad = ~np.isfinite(values) | (values < 0) | (values > MAX_COUNT) | (values != np.floor(values))
    if bad.any():
        raise ValueError(
            f"data set {label!r}: {int(bad.sum())} values are not raw counts (non-negative integers up to "
            f"{MAX_COUNT:g}), e.g. {values[bad][:3].tolist()}; choose the layer of raw counts"
        )


def _coordinates(
    ms, spatial_key: str, joinids: np.ndarray, label: str, *, partial: str = "refuse"
) -> np.ndarray | None:
    """The data set's coordinates from ``obsm[spatial_key]`` (float64, 2 or 3 columns), or None when its cells have
    none; where only some cells have them, refused (``partial="refuse"``) or left out with a warning."""
    array = ms.obsm[spatial_key]
    width = int(array.shape[1])
    table = array.read(coords=(joinids,)).tables().concat()
    rows = np.searchsorted(joinids, table["soma_dim_0"].to_numpy())
    if len(rows) == 0:
        return None
    if width not in (2, 3):
        raise ValueError(f"obsm[{spatial_key!r}] must have 2 or 3 columns, got {width}")
    coords = np.full((len(joinids), width), np.nan)
    coords[rows, table["soma_dim_1"].to_numpy()] = table["soma_data"].to_numpy()
    bad = ~np.isfinite(coords).all(1)
    if bad.any() and partial != "refuse":
        logger.warning(
            "%s: %d of %d cells have no obsm[%r] coordinates, so none are used (select the spatial "
            "data sets in a query of their own)",
            label,
            int(bad.sum()),
            len(joinids),
            spatial_key,
        )
        return None
    if bad.any():
        raise ValueError(
            f"data set {label!r}: {int(bad.sum())} of {len(joinids)} cells have no (or non-finite) "
            f"obsm[{spatial_key!r}] coordinates; a data set is spatial in all its cells or in none "
            "(dataset_key, --dataset-key, keeps data sets apart)"
        )
    return coords


@dataclass
class _Plan:
    """Where every cell goes: saved in the work folder, so that a resumed run writes the same shards."""

    labels: list[str]  # per data set
    gene_joinids: list[np.ndarray]  # per data set, var soma_joinids of its genes
    n_empty: list[int]
    n_probes: list[int]
    spatial_dims: list[int]
    set_rows: list[np.ndarray]  # per set, obs soma_joinids
    set_dataset: np.ndarray
    set_batch: list[np.ndarray]
    set_coords: list[np.ndarray | None]
    shard_bounds: np.ndarray  # shard k holds sets shard_bounds[k]:shard_bounds[k+1]
    batches: list[str]  # batch labels, by id

    def save(self, path: Path) -> None:
        def ragged(arrays):
            return np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)

        coords = [np.zeros((len(r), 0)) if c is None else c for r, c in zip(self.set_rows, self.set_coords)]
        widths = np.array([c.shape[1] for c in coords], dtype=np.int64)
        flat = np.concatenate([np.pad(c, ((0, 0), (0, 3 - c.shape[1])), constant_values=np.nan) for c in coords])
        partial = path.with_name(f".{path.name}.partial")
        with open(partial, "wb") as f:
            np.savez(
                f, labels=np.array(self.labels, dtype=str), genes=np.concatenate(self.gene_joinids),
                gene_offsets=ragged(self.gene_joinids), n_empty=np.array(self.n_empty),
                n_probes=np.array(self.n_probes),
                spatial_dims=np.array(self.spatial_dims), rows=np.concatenate(self.set_rows),
                row_offsets=ragged(self.set_rows), set_dataset=self.set_dataset, batch=np.concatenate(self.set_batch),
                coords=flat, coord_widths=widths, shard_bounds=self.shard_bounds,
                batches=np.array(self.batches, dtype=str),
            )  # fmt: skip
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> _Plan:
        with np.load(path, allow_pickle=False) as f:
            a = {k: f[k] for k in f.files}

        def split(values, offsets):
            return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]

        rows = split(a["rows"], a["row_offsets"])
        coords = [None if w == 0 else c[:, :w] for c, w in zip(split(a["coords"], a["row_offsets"]), a["coord_widths"])]
        return cls(
            labels=[str(x) for x in a["labels"]], gene_joinids=split(a["genes"], a["gene_offsets"]),
            n_empty=a["n_empty"].tolist(), n_probes=a["n_probes"].tolist(), spatial_dims=a["spatial_dims"].tolist(),
            set_rows=rows, set_dataset=a["set_dataset"], set_batch=split(a["batch"], a["row_offsets"]),
            set_coords=coords, shard_bounds=a["shard_bounds"], batches=[str(x) for x in a["batches"]],
        )  # fmt: skip


def _make_plan(
    experiment,
    query: _Query,
    settings: dict[str, Any],
    shard_cells: int,
    block_cells: int,
    presence_rows: dict[str, int] | None = None,
) -> _Plan:
    """Step 1: one pass over the counts of every data set (checks, genes, empty cells), then its cell sets. A data
    set's genes are those it measured where the presence matrix says (the Census, data sets by ``dataset_id``),
    else those with a count in at least one of its cells."""
    ms = experiment.ms[settings["measurement"]]
    X = ms.X[settings["layer"]]
    dataset_key, sample_key, batch_key = settings["dataset_key"], settings["sample_key"], settings["batch_key"]
    probe = np.array([is_control_probe(g) for g in query.genes]) & (not settings["keep_control_probes"])
    obs = query.obs
    if dataset_key is None:
        groups = [("all", obs.index.to_numpy())]
    else:  # data sets in the order of their first cell
        codes, labels = pd.factorize(obs[dataset_key].astype(str), sort=False)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(labels) + 1))
        groups = [(str(labels[i]), order[bounds[i] : bounds[i + 1]]) for i in range(len(labels))]
    plan = _Plan([], [], [], [], [], [], np.zeros(0, np.int32), [], [], np.zeros(0, np.int64), [])
    batches: dict[str, int] = {}
    set_dataset = []
    bar = tqdm(total=len(obs), desc="reading counts (1/2)", unit="cell", disable=None)
    with bar:
        for label, positions in groups:
            joinids = obs["soma_joinid"].to_numpy()[positions]
            detected = np.zeros(query.n_var, dtype=bool)
            totals = np.zeros(len(joinids))
            for start, block in zip(range(0, len(joinids), block_cells), _blocks(joinids, block_cells)):
                counts = _read_block(X, block, query.n_var)
                _check_counts(counts.data, label)
                detected[counts.indices[counts.data > 0]] = True
                totals[start : start + len(block)] = counts @ (~probe).astype(np.float64)
                bar.update(len(block))
            measured = _measured(ms, presence_rows, label, query.n_var)
            if measured is None:  # no record of what it measured: the genes it counted
                measured = detected
            elif (detected & ~measured).any():
                logger.warning("data set %r: %d genes with counts are not in the presence matrix; kept", label,
                               int((detected & ~measured).sum()))  # fmt: skip
                measured = measured | detected
            genes = np.flatnonzero(measured & ~probe)
            keep = totals > 0
            if not keep.any():
                logger.warning("data set %r: no cell holds a count; it is left out", label)
                continue
            d = len(plan.labels)
            coords = _coordinates(ms, settings["spatial_key"], joinids, label) if query.has_spatial else None
            samples = None if sample_key is None else obs[sample_key].to_numpy()[positions].astype(str)
            if batch_key is not None:
                names = obs[batch_key].to_numpy()[positions].astype(str)
            else:
                names = samples if samples is not None else np.full(len(joinids), "all")
            batch_ids = np.array([batches.setdefault(f"{d}:{label}/{b}", len(batches)) for b in names])
            sets = cell_sets(samples, len(joinids), settings["max_cells"], coords=coords, keep=keep,
                             seed=settings["seed"])  # fmt: skip
            plan.labels.append(label)
            plan.gene_joinids.append(genes)
            plan.n_empty.append(int((~keep).sum()))
            plan.n_probes.append(int((measured & probe).sum()))
            plan.spatial_dims.append(0 if coords is None else coords.shape[1])
            for rows in sets:
                plan.set_rows.append(joinids[rows])
                plan.set_batch.append(batch_ids[rows])
                plan.set_coords.append(None if coords is None else coords[rows])
                set_dataset.append(d)
            logger.info("data set %r: %d cells in %d sets, %d genes", label, int(keep.sum()), len(sets), len(genes))
    if not plan.labels:
        raise ValueError("no selected cell holds a count")
    plan.set_dataset = np.array(set_dataset, dtype=np.int32)
    bounds, filled = [0], 0
    for i, rows in enumerate(plan.set_rows):  # as prepare_corpus: a shard closes after the set that fills it
        filled += len(rows)
        if filled >= shard_cells:
            bounds.append(i + 1)
            filled = 0
    if bounds[-1] != len(plan.set_rows):
        bounds.append(len(plan.set_rows))
    plan.shard_bounds = np.array(bounds, dtype=np.int64)
    plan.batches = list(batches)
    return plan


def _write_planned_shard(X, plan: _Plan, index: int, folder: Path, n_var: int, block_cells: int) -> None:
    """Step 2 for one shard: read its sets' counts in blocks, keep each data set's genes, write the shard."""
    members = range(plan.shard_bounds[index], plan.shard_bounds[index + 1])
    counts: dict[int, np.ndarray] = {}
    for d in dict.fromkeys(int(plan.set_dataset[i]) for i in members):
        joinids = np.unique(np.concatenate([plan.set_rows[i] for i in members if plan.set_dataset[i] == d]))
        columns = np.full(n_var, -1, dtype=np.int64)
        columns[plan.gene_joinids[d]] = np.arange(len(plan.gene_joinids[d]))
        parts = [_read_block(X, block, n_var, columns) for block in _blocks(joinids, block_cells)]
        counts[d] = (joinids, sp.vstack(parts, format="csr", dtype=np.float32))
    sets = []
    for i in members:
        d = int(plan.set_dataset[i])
        joinids, matrix = counts[d]
        rows = matrix[np.searchsorted(joinids, plan.set_rows[i])]
        rows.sort_indices()
        sets.append(StoredSet(rows, d, plan.set_batch[i], plan.set_coords[i], plan.set_rows[i]))
    write_shard(folder, index, sets)


def _work_folder(out: Path, stamp: str) -> tuple[Path, bool]:
    """The work folder beside ``out`` and whether it holds a plan of these settings (a run to resume). One of other
    settings, or without a plan, is emptied and used again (this package wrote it); a folder there that is not one
    is refused."""
    work = out.with_name(f".{out.name}.soma-work")
    marker = work / "work.json"
    if work.exists():
        try:
            saved = json.loads(marker.read_text())
        except (OSError, ValueError):
            saved = None
        entries = {p.name for p in work.iterdir()}
        ours = isinstance(saved, dict) and saved.get("format") == WORK_FORMAT
        ours = ours and entries <= {"work.json", "plan.npz", ".plan.npz.partial", "shards"}
        if not ours and entries - {".work.json.partial"}:  # (empty, or killed as it was made: ours to reuse)
            raise FileExistsError(
                f"{work} is in the way and is not a work folder of opencellplm; remove it yourself or choose "
                "another output"
            )
        if ours and saved.get("stamp") == stamp and (work / "plan.npz").is_file():
            (work / "shards").mkdir(exist_ok=True)
            return work, True
        why = "other settings" if ours and saved.get("stamp") != stamp else "no plan saved yet"
        logger.warning("%s holds an unfinished run (%s): starting over", work, why)
        shutil.rmtree(work)
    work.mkdir()
    partial = work / ".work.json.partial"
    partial.write_text(json.dumps({"format": WORK_FORMAT, "stamp": stamp}) + "\n")
    partial.replace(marker)
    (work / "shards").mkdir()
    return work, False


def prepare_corpus_from_soma(
    uri: str | Path | None,
    out: str | Path,
    *,
    census: str | None = None,
    organism: str = "homo_sapiens",
    measurement: str = "RNA",
    layer: str = "raw",
    obs_filter: str | None = None,
    dataset_key: str | None = None,
    sample_key: str | None = None,
    batch_key: str | None = None,
    gene_key: str = "feature_name",
    spatial_key: str | None = "spatial",
    max_cells: int = 4000,
    shard_cells: int = 100_000,
    block_cells: int = 20_000,
    seed: int = 0,
    overwrite: bool = False,
    keep_control_probes: bool = False,
) -> Path:
    """Write a corpus directory from the cells of a SOMA experiment; returns the path of its manifest.

    Parameters
    ----------
    uri
        A SOMA experiment (a local folder or any URI tiledbsoma opens); None with ``census``.
    out
        Directory to create (as :func:`~opencellplm.data.corpus.prepare_corpus`).
    census, organism
        A CELLxGENE Census release (``"stable"``, ``"2025-01-30"``, ...) and its experiment, instead of ``uri``;
        needs network and ``cellxgene-census``.
    measurement, layer
        The measurement and its ``X`` layer of raw counts.
    obs_filter
        A tiledbsoma ``value_filter`` on ``obs``, e.g. ``"tissue_general == 'lung' and is_primary_data == True"``.
    dataset_key
        ``obs`` column of data sets (each with its own genes); default: ``dataset_id`` in the Census, else the whole
        query is one data set.
    sample_key, batch_key, spatial_key, max_cells, shard_cells, seed, keep_control_probes
        As in :func:`~opencellplm.data.corpus.prepare_corpus` (``spatial_key`` names an ``obsm`` array of the
        measurement).
    gene_key
        ``var`` column of gene ids (the Census's ``feature_name`` holds symbols, ``feature_id`` Ensembl ids).
    block_cells
        Cells read at a time.
    overwrite
        Replace ``out`` if it is a corpus this package wrote that holds nothing else.
    """
    for name, value in (("max_cells", max_cells), ("shard_cells", shard_cells), ("block_cells", block_cells)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if census is not None and dataset_key is None:  # the Census's data sets measure different genes: never one
        dataset_key = "dataset_id"
        logger.info("the Census: one data set per dataset_id (dataset_key)")
    source = str(uri) if census is None else f"census:{census}/{organism}"
    local_input = [Path(uri)] if census is None and uri is not None and "://" not in str(uri) else []
    target = {"overwrite": overwrite, "recognise": corpus_problems, "kind": "corpus", "inputs": local_input}
    out = check_output_directory(out, **target)
    settings = {
        "source": source, "measurement": measurement, "layer": layer, "obs_filter": obs_filter,
        "dataset_key": dataset_key, "sample_key": sample_key, "batch_key": batch_key, "gene_key": gene_key,
        "spatial_key": spatial_key, "max_cells": max_cells, "shard_cells": shard_cells, "seed": seed,
        "keep_control_probes": keep_control_probes,
    }  # fmt: skip
    # a second run into the same folder fails at once, before the experiment is read; a refused one leaves no folder
    with (
        new_folders_removed_on_failure(out),
        output_lock(out, "corpus"),
        open_source(uri, census=census, organism=organism) as (experiment, presence_rows),
    ):
        query = _check_query(
            experiment, measurement=measurement, layer=layer, gene_key=gene_key, obs_filter=obs_filter,
            keys=[dataset_key, sample_key, batch_key], spatial_key=spatial_key,
        )  # fmt: skip
        stamp = sha256_of_array(np.frombuffer(json.dumps(settings | query.stamp, sort_keys=True).encode(), np.uint8))
        work, resumed = _work_folder(out, stamp)
        if resumed:
            plan = _Plan.load(work / "plan.npz")
            logger.info("resuming the unfinished run in %s", work)
        else:
            try:
                rows = presence_rows if dataset_key == "dataset_id" else None
                plan = _make_plan(experiment, query, settings, shard_cells, block_cells, rows)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)  # nothing worth keeping before the plan
                raise
            plan.save(work / "plan.npz")
        n_shards = len(plan.shard_bounds) - 1
        X = experiment.ms[measurement].X[layer]
        todo = [k for k in range(n_shards) if not (work / f"shards/shard-{k:05d}.npz").is_file()]
        if resumed:
            logger.info("%d of %d shards were written before; writing %d", n_shards - len(todo), n_shards, len(todo))
        for k in tqdm(todo, desc="writing shards (2/2)", unit="shard", disable=None):
            _write_planned_shard(X, plan, k, work, query.n_var, block_cells)
        manifest = write_directory(out, lambda folder: _finish(work, folder, plan, query, settings), **target)
        shutil.rmtree(work)
    logger.info("corpus %s: %d cells, %d sets, %d shards", out, manifest["n_cells"], manifest["n_sets"], n_shards)
    return out / "manifest.json"


def _finish(work: Path, folder: Path, plan: _Plan, query: _Query, settings: dict[str, Any]) -> dict[str, Any]:
    """Make ``folder`` the corpus: the work folder's shards, the genes files, the vocabulary and the manifest."""
    bounds = plan.shard_bounds
    shards = [
        shard_entry(
            work, f"shards/shard-{k:05d}.npz", int(bounds[k + 1] - bounds[k]),
            sum(len(plan.set_rows[i]) for i in range(bounds[k], bounds[k + 1])),
        )
        for k in range(len(bounds) - 1)
    ]  # fmt: skip
    (folder / "shards").mkdir()
    for k in range(len(bounds) - 1):  # linked, not moved: should the rest fail, the work folder still has them all
        name = f"shards/shard-{k:05d}.npz"
        try:
            os.link(work / name, folder / name)
        except OSError:  # a file system without hard links
            shutil.copyfile(work / name, folder / name)
    (folder / "datasets").mkdir()
    vocabulary: dict[str, int] = {}
    datasets = []
    for d, label in enumerate(plan.labels):
        genes = [str(g) for g in query.genes[plan.gene_joinids[d]]]
        for g in genes:
            vocabulary.setdefault(g, len(vocabulary))
        genes_file = folder / "datasets" / f"{d}.genes.txt"
        genes_file.write_text("".join(f"{g}\n" for g in genes), encoding="utf-8")
        in_sets = plan.set_dataset == d
        datasets.append(
            {
                "id": d,
                "file": label,
                "source": settings["source"],
                "n_cells": int(sum(len(r) for r, keep in zip(plan.set_rows, in_sets) if keep)),
                "n_empty_cells_left_out": plan.n_empty[d],
                "n_control_probes_left_out": plan.n_probes[d],
                "n_genes": len(genes),
                "genes_file": f"datasets/{d}.genes.txt",
                "genes_sha256": sha256_of(genes_file),
                "n_sets": int(in_sets.sum()),
                "spatial_dims": plan.spatial_dims[d] or None,  # as from h5ad files
            }
        )
    batches = {label: i for i, label in enumerate(plan.batches)}
    return write_manifest(folder, vocabulary, datasets, batches, shards, settings)


def export_query(
    uri: str | Path | None,
    path: Path,
    *,
    census: str | None = None,
    organism: str = "homo_sapiens",
    measurement: str = "RNA",
    layer: str = "raw",
    obs_filter: str | None = None,
    gene_key: str = "feature_name",
    spatial_key: str | None = "spatial",
    sample_key: str | None = None,
    check_genes: Callable[[list[str]], Any] | None = None,
    block_cells: int = 20_000,
) -> None:
    """Write the cells an ``obs`` query selects as the h5ad ``path``: their ``obs`` rows (``soma_joinid`` kept),
    the measurement's genes as ``var_names`` (``var[gene_key]``), the ``layer``'s counts as X (read and written in
    blocks of cells) and ``obsm[spatial_key]`` where the measurement has it. Every check comes first, with
    ``check_genes(genes)``, which raises to refuse the genes (e.g. when none is in a model's vocabulary). A file
    already at ``path`` that an export of the same query and settings wrote is kept: a rerun after a kill reads
    the experiment once."""
    import h5py
    from anndata.io import write_elem

    with open_experiment(uri, census=census, organism=organism) as experiment:
        query = _check_query(experiment, measurement=measurement, layer=layer, gene_key=gene_key,
                             obs_filter=obs_filter, keys=[sample_key], spatial_key=spatial_key)  # fmt: skip
        genes = [str(g) for g in query.genes]
        if check_genes is not None:
            check_genes(genes)
        source = str(uri) if census is None else f"census:{census}/{organism}"
        settings = {"source": source, "measurement": measurement, "layer": layer, "obs_filter": obs_filter,
                    "gene_key": gene_key, "spatial_key": spatial_key}  # fmt: skip
        stamp = json.dumps(settings | query.stamp, sort_keys=True)
        record = path.with_name(path.name + ".json")
        if path.is_file() and record.is_file() and record.read_text() == stamp:
            logger.info("keeping %s, exported by an earlier run of the same query", path)
            return
        joinids = query.obs["soma_joinid"].to_numpy()
        ms = experiment.ms[measurement]
        obs = experiment.obs.read(coords=(joinids,)).concat().to_pandas().sort_values("soma_joinid")
        obs.index = (obs.pop("obs_id") if "obs_id" in obs else obs["soma_joinid"]).astype(str).to_numpy()
        var = ms.var.read().concat().to_pandas().sort_values("soma_joinid")
        var.index = var[gene_key].astype(str).to_numpy()
        var.index.name = None
        coords = _coordinates(ms, spatial_key, joinids, "the query", partial="leave out") if query.has_spatial else None
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with h5py.File(partial, "w") as f:
                f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
                write_elem(f, "obs", obs)
                write_elem(f, "var", var)
                write_elem(f, "obsm", {} if coords is None else {spatial_key: coords})
                write_elem(f, "uns", {})
                _write_counts(f, experiment.ms[measurement].X[layer], joinids, query.n_var, block_cells)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(path)
        record.write_text(stamp)
        logger.info("exported %d cells x %d genes of %s to %s", len(joinids), len(genes), settings["source"], path)


def _write_counts(f, X, joinids: np.ndarray, n_var: int, block_cells: int) -> None:
    """The rows ``joinids`` of the SOMA matrix ``X`` as the CSR matrix ``X`` of the open h5ad ``f``, appended block
    by block (64-bit offsets: an atlas holds more than 2**31 counts)."""
    group = f.create_group("X")
    group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (len(joinids), n_var)})
    data = group.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 20,))
    indices = group.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 20,))
    indptr = [np.zeros(1, dtype=np.int64)]
    bar = tqdm(total=len(joinids), desc="reading the query", unit="cell", disable=None)
    with bar:
        for block in _blocks(joinids, block_cells):
            counts = _read_block(X, block, n_var)
            start = data.shape[0]
            data.resize((start + counts.nnz,))
            indices.resize((start + counts.nnz,))
            data[start:] = counts.data.astype(np.float32, copy=False)
            indices[start:] = counts.indices
            indptr.append(counts.indptr[1:].astype(np.int64) + start)
            bar.update(len(block))
    group.create_dataset("indptr", data=np.concatenate(indptr))
