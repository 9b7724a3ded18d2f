"""A pretraining corpus: many h5ad files cut into cell sets, stored as shards, streamed back.

:func:`prepare_corpus` reads each file (backed, block by block), checks it, splits it into cell sets
(samples capped at ``max_cells``; spatial tiles where coordinates exist) and writes the sets to
``shards/shard-NNNNN.npz`` (plain arrays, no pickle) with a ``manifest.json`` that records every data
set's genes, the corpus vocabulary, batch and data-set ids, per-shard counts, and the size and sha256 of
every file (checked by :class:`Corpus`: sizes when it opens, a shard's hash when it first reads it).

:class:`CorpusDataset` iterates over the shards as :class:`~opencellplm.module.CellBatch` objects,
one cell set each. The shards are split between distributed ranks (``rank::world_size``) and then
between DataLoader workers, so every set is read by exactly one process per epoch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from .._files import check_output_directory, marker_problems, output_lock, sha256_of, write_directory
from .._sparse import scipy_to_torch_csr
from ..module import CellBatch
from .cellsets import cell_sets, normalize_coordinates
from .genes import gene_list_problems, is_control_probe
from .reader import counts_matrix, iter_row_blocks, open_h5ad, read_rows
from .validate import coordinates, empty_cells_note, validate

logger = logging.getLogger(__name__)

FORMAT = "opencellplm-corpus"
FORMAT_VERSION = 1
MANIFEST, VOCABULARY = "manifest.json", "genes.txt"
MANIFEST_KEYS = ("format", "format_version", "created", "vocabulary_file", "n_genes", "n_cells", "n_sets")
MANIFEST_KEYS += ("datasets", "batches", "shards")
DATASET_KEYS, SHARD_KEYS = ("id", "file", "genes_file", "n_genes"), ("file", "n_sets", "n_cells")
# Checksums (a manifest without vocabulary_sha256 predates them): vocabulary_sha256, per data set genes_sha256,
# per shard bytes and sha256.
CHECKSUM = "vocabulary_sha256"
SHARD_ARRAYS = {  # name: dtype (see write_shard)
    "set_offsets": np.int64,
    "indptr": np.int64,
    "indices": np.int32,
    "data": np.float32,
    "n_genes": np.int64,
    "dataset": np.int32,
    "batch": np.int64,
    "coords": np.float64,
    "coord_dims": np.int8,
    "source_rows": np.int64,
}


@dataclass(frozen=True)
class StoredSet:
    """One cell set as a shard stores it."""

    counts: sp.csr_matrix  # (n, dataset genes)
    dataset: int
    batch: np.ndarray  # (n,) corpus-wide batch ids
    coords: np.ndarray | None  # (n, 2 or 3), raw units
    rows: np.ndarray  # rows in the source file


def _has_counts(matrix, columns: np.ndarray) -> np.ndarray:
    """Per cell, whether any of ``columns`` holds a count."""
    n_rows, n_cols = matrix.shape
    out = np.zeros(n_rows, dtype=bool)
    for start, block in iter_row_blocks(matrix, n_rows, n_cols):
        out[start : start + block.shape[0]] = np.asarray(block[:, columns].sum(axis=1)).ravel() > 0
    return out


def prepare_corpus(
    files: Sequence[str | Path],
    out: str | Path,
    *,
    layer: str | None = None,
    sample_key: str | None = None,
    batch_key: str | None = None,
    spatial_key: str | None = "spatial",
    max_cells: int = 4000,
    shard_cells: int = 100_000,
    seed: int = 0,
    overwrite: bool = False,
    keep_control_probes: bool = False,
) -> Path:
    """Write a corpus directory from h5ad files; returns the path of its manifest.

    Parameters
    ----------
    files
        h5ad files of raw counts, each with its own gene set (var_names are the gene ids).
    out
        Directory to create.
    layer, sample_key, spatial_key
        As in :func:`~opencellplm.data.validate`, applied to every file (keys must exist where given,
        except the default ``spatial``).
    batch_key
        ``obs`` column of batch labels; default: the sample, or the file. Batch ids are corpus-wide.
    max_cells
        Largest cell set.
    shard_cells
        Cells per shard (a shard closes after the set that reaches it).
    seed
        Seed of the random partition of large non-spatial samples.
    overwrite
        Replace ``out`` if it is a corpus this package wrote that holds nothing else (never a folder
        with other files, nor one holding an input).
    keep_control_probes
        Keep imaging panels' control probes as if they were genes (:func:`~opencellplm.data.genes.is_control_probe`;
        by default they are left out: they measure background). Only to rebuild a corpus of an earlier version.
    """
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no input file given")
    target = {"overwrite": overwrite, "recognise": corpus_problems, "kind": "corpus", "inputs": files}
    out = check_output_directory(out, **target)  # before the long checks
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"input file(s) not found: {missing}")
    with output_lock(out, "corpus"):  # a second run into the same folder fails at once, not after the checks
        settings = {"layer": layer, "sample_key": sample_key, "spatial_key": spatial_key}
        for path in files:  # every file is checked before anything is written
            with open_h5ad(path) as adata:
                report = validate(adata, require_counts=True, **settings)
                problems = list(report.errors)
                if report.duplicate_genes:
                    problems.append(f"duplicate gene ids {report.duplicate_genes[:5]}; make them unique first")
                else:  # the genes files hold one id a line: blank or padded ids would shift the columns
                    unstorable = gene_list_problems([str(g) for g in adata.var_names], first_line=0)
                    if unstorable:
                        problems.append("var_names: " + "; ".join(unstorable[:3]).replace("line", "gene"))
                if not keep_control_probes and adata.n_vars and all(is_control_probe(g) for g in adata.var_names):
                    problems.append(
                        f"every gene is a control probe (e.g. {list(adata.var_names[:2])}), which the corpus leaves out"
                    )
                if batch_key is not None and batch_key not in adata.obs:
                    problems.append(f"obs column {batch_key!r} not found; adata.obs has {list(adata.obs.columns)}")
                if problems:
                    raise ValueError(f"{path} cannot be used:\n- " + "\n- ".join(problems))
                for message in [*report.warnings, empty_cells_note(adata, report, "they are left out")]:
                    if message:
                        warnings.warn(f"{path.name}: {message}", UserWarning, stacklevel=2)

        manifest = write_directory(
            out,
            lambda folder: _write_corpus(
                files, folder, settings, batch_key, max_cells, shard_cells, seed, keep_control_probes
            ),
            **target,
        )
    logger.info(
        "corpus %s: %d cells, %d sets, %d shards", out, manifest["n_cells"], manifest["n_sets"], len(manifest["shards"])
    )
    return out / MANIFEST


def corpus_problems(folder: Path) -> list[str]:
    """Why ``folder`` is not a corpus written by this package holding nothing else (empty if it is)."""
    expected = {MANIFEST: r"", VOCABULARY: r"", "shards": r"shard-\d{5}\.npz", "datasets": r"\d+\.genes\.txt"}
    problems = []
    for entry in sorted(folder.iterdir()):
        pattern = expected.get(entry.name)
        if pattern is None or entry.is_dir() != bool(pattern):
            problems.append(f"it holds {entry.name}")
        elif pattern:
            problems += [
                f"it holds {entry.name}/{f.name}"
                for f in sorted(entry.iterdir())
                if not re.fullmatch(pattern, f.name) or not f.is_file()
            ]
    return marker_problems(folder / MANIFEST, FORMAT) + problems


def _write_corpus(
    files: list[Path],
    out: Path,
    settings: dict[str, Any],
    batch_key: str | None,
    max_cells: int,
    shard_cells: int,
    seed: int,
    keep_control_probes: bool = False,
) -> dict[str, Any]:
    (out / "shards").mkdir()
    (out / "datasets").mkdir()
    vocabulary: dict[str, int] = {}
    batches: dict[str, int] = {}
    datasets, shards = [], []
    buffer: list[StoredSet] = []
    for dataset_id, path in enumerate(files):
        with open_h5ad(path) as adata:
            report = validate(adata, require_counts=True, **settings)
            all_genes = [str(g) for g in adata.var_names]
            columns = np.array(
                [i for i, g in enumerate(all_genes) if keep_control_probes or not is_control_probe(g)], dtype=np.int64
            )
            genes = [all_genes[i] for i in columns]  # control probes measure background: not in the vocabulary
            if len(genes) < len(all_genes):
                logger.info("%s: %d control probes left out", path.name, len(all_genes) - len(genes))
            for g in genes:
                vocabulary.setdefault(g, len(vocabulary))
            genes_file = out / "datasets" / f"{dataset_id}.genes.txt"
            genes_file.write_text("".join(f"{g}\n" for g in genes), encoding="utf-8")
            sample_key = settings["sample_key"]
            samples = None if sample_key is None else adata.obs[sample_key].astype(str).to_numpy()
            labels = _batch_labels(adata, batch_key, samples)
            # Batch ids are corpus-wide; files with the same name in different folders stay apart.
            batch_ids = np.array([batches.setdefault(f"{dataset_id}:{path.name}/{b}", len(batches)) for b in labels])
            coords = coordinates(adata, settings["spatial_key"]) if report.spatial_dims else None
            matrix = counts_matrix(adata, settings["layer"])
            keep = np.ones(adata.n_obs, dtype=bool)
            keep[report.empty_cells] = False
            if len(columns) < len(all_genes):  # cells whose only counts were control probes are empty too
                keep &= _has_counts(matrix, columns)
            n_probes = len(all_genes) - len(columns)
            sets = cell_sets(samples, adata.n_obs, max_cells, coords=coords, keep=keep, seed=seed)
            for rows in tqdm(sets, desc=path.name, unit="set", disable=None):
                coords_rows = None if coords is None else coords[rows]
                counts = read_rows(matrix, rows, columns if n_probes else None)
                buffer.append(StoredSet(counts, dataset_id, batch_ids[rows], coords_rows, rows))
                if sum(s.counts.shape[0] for s in buffer) >= shard_cells:
                    shards.append(write_shard(out, len(shards), buffer))
                    buffer = []
            datasets.append(
                {
                    "id": dataset_id,
                    "file": path.name,
                    "n_cells": int(keep.sum()),
                    "n_empty_cells_left_out": int(adata.n_obs - keep.sum()),
                    "n_control_probes_left_out": n_probes,
                    "n_genes": len(genes),
                    "genes_file": f"datasets/{dataset_id}.genes.txt",
                    "genes_sha256": sha256_of(genes_file),
                    "n_sets": len(sets),
                    "spatial_dims": report.spatial_dims,
                }
            )
            logger.info("%s: %d cells in %d sets", path.name, int(keep.sum()), len(sets))
    if buffer:
        shards.append(write_shard(out, len(shards), buffer))
    return write_manifest(out, vocabulary, datasets, batches, shards, settings | {"batch_key": batch_key,
                            "max_cells": max_cells, "seed": seed})  # fmt: skip


def write_manifest(
    out: Path,
    vocabulary: dict[str, int],
    datasets: list[dict[str, Any]],
    batches: dict[str, int],
    shards: list[dict[str, Any]],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Write the vocabulary and the manifest of a corpus whose shards and genes files are in ``out``."""
    (out / VOCABULARY).write_text("".join(f"{g}\n" for g in vocabulary), encoding="utf-8")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "vocabulary_file": VOCABULARY,
        CHECKSUM: sha256_of(out / VOCABULARY),
        "n_genes": len(vocabulary),
        "n_cells": sum(s["n_cells"] for s in shards),
        "n_sets": sum(s["n_sets"] for s in shards),
        "datasets": datasets,
        "batches": batches,
        "shards": shards,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _batch_labels(adata, batch_key: str | None, samples: np.ndarray | None) -> np.ndarray:
    if batch_key is not None:
        labels = adata.obs[batch_key]
        if labels.isna().any():
            raise ValueError(f"{int(labels.isna().sum())} cells have no {batch_key!r} label")
        return labels.astype(str).to_numpy()
    if samples is not None:
        return samples
    return np.full(adata.n_obs, "all")


def write_shard(out: Path, index: int, sets: list[StoredSet]) -> dict:
    # Sets of different data sets have different gene counts: concatenate the CSR parts row-wise by hand.
    sizes = np.array([s.counts.shape[0] for s in sets])
    nnz = np.array([s.counts.nnz for s in sets])
    indptr = np.concatenate([[0], *[s.counts.indptr[1:] + offset for s, offset in zip(sets, np.cumsum(nnz) - nnz)]])
    coords = np.full((sizes.sum(), 3), np.nan)  # float64: large absolute coordinates keep their precision
    for s, start in zip(sets, np.cumsum(sizes) - sizes):
        if s.coords is not None:
            coords[start : start + len(s.rows), : s.coords.shape[1]] = s.coords
    name = f"shards/shard-{index:05d}.npz"
    partial = out / f"shards/.shard-{index:05d}.npz.partial"  # a killed run leaves no shard, or the whole one
    with open(partial, "wb") as f:
        np.savez(
            f,
            set_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            indptr=indptr.astype(np.int64, copy=False),
            indices=np.concatenate([s.counts.indices for s in sets], dtype=np.int32),  # no second copy
            data=np.concatenate([s.counts.data for s in sets], dtype=np.float32),
            n_genes=np.array([s.counts.shape[1] for s in sets], dtype=np.int64),
            dataset=np.array([s.dataset for s in sets], dtype=np.int32),
            batch=np.concatenate([s.batch for s in sets]).astype(np.int64),
            coords=coords,
            coord_dims=np.array([0 if s.coords is None else s.coords.shape[1] for s in sets], dtype=np.int8),
            source_rows=np.concatenate([s.rows for s in sets]).astype(np.int64),
        )
    os.replace(partial, out / name)
    return shard_entry(out, name, len(sets), int(sizes.sum()))


def shard_entry(out: Path, name: str, n_sets: int, n_cells: int) -> dict[str, Any]:
    """The manifest entry of the shard ``name`` (relative to ``out``)."""
    size, sha256 = (out / name).stat().st_size, sha256_of(out / name)
    return {"file": name, "n_sets": n_sets, "n_cells": n_cells, "bytes": size, "sha256": sha256}


def _check_sha256(path: Path, expected: str | None) -> None:
    """Raise unless the file's sha256 is ``expected`` (None: the manifest records none)."""
    if expected is None:
        return
    try:
        actual = sha256_of(path)
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from err
    if actual != expected:
        raise ValueError(
            f"{path}: sha256 {actual[:16]}... differs from {expected[:16]}... in the manifest; the file changed "
            "after prepare-corpus"
        )


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, its keys and counts checked."""
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as err:  # not JSON, or not UTF-8
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not a manifest (a JSON {type(manifest).__name__}, not an object)")
    version = manifest.get("format_version", 0)
    if manifest.get("format") != FORMAT or not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} is not an {FORMAT} manifest this version can read")
    problems = [f"no {k!r}" for k in MANIFEST_KEYS if k not in manifest]
    for key, fields in (("datasets", DATASET_KEYS), ("shards", SHARD_KEYS)):
        entries = manifest.get(key, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            problems.append(f"{key!r} is not a list of objects")
            continue
        problems += [f"{key}[{i}] has no {f!r}" for i, entry in enumerate(entries) for f in fields if f not in entry]
    if not problems:
        counts = [("", manifest, ("n_genes", "n_cells", "n_sets"))]
        counts += [(f"datasets[{i}].", d, ("id", "n_genes")) for i, d in enumerate(manifest["datasets"])]
        counts += [(f"shards[{i}].", s, ("n_sets", "n_cells")) for i, s in enumerate(manifest["shards"])]
        problems = [f"{at}{k} is {e[k]!r}, not a count" for at, e, keys in counts for k in keys if not _is_count(e[k])]
        if not isinstance(manifest["batches"], dict):
            problems.append("'batches' is not an object")
    if not problems and CHECKSUM in manifest:
        digests = [("", manifest, CHECKSUM)]
        digests += [(f"datasets[{i}].", d, "genes_sha256") for i, d in enumerate(manifest["datasets"])]
        digests += [(f"shards[{i}].", s, "sha256") for i, s in enumerate(manifest["shards"])]
        problems = [f"{at}{k} is {e.get(k)!r}, not a sha256" for at, e, k in digests if not _is_sha256(e.get(k))]
        problems += [
            f"shards[{i}].bytes is {s.get('bytes')!r}, not a count"
            for i, s in enumerate(manifest["shards"])
            if not _is_count(s.get("bytes"))
        ]
    if not problems:
        ids = [d["id"] for d in manifest["datasets"]]
        if len(set(ids)) < len(ids):
            problems.append(f"data set ids {ids} repeat")
        for key in ("n_sets", "n_cells"):
            total = sum(s[key] for s in manifest["shards"])
            if manifest[key] != total:
                problems.append(f"{key} is {manifest[key]} but the shards hold {total}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return manifest


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _read_genes(path: Path, n_genes: int, sha256: str | None) -> list[str]:
    """The gene ids in a genes file the manifest names, one a line, ``n_genes`` of them."""
    _check_sha256(path, sha256)
    try:
        genes = path.read_bytes().decode("utf-8").splitlines()
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    if len(genes) != n_genes:
        raise ValueError(f"{path}: {len(genes)} genes, the manifest records {n_genes}")
    return genes


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz file (never unpickled)."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable npz (truncated, or not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable npz (corrupt, or holding pickled objects): {err}") from err


def _inside(directory: Path, entry: str, name: Any) -> Path:
    """``directory / name`` for the manifest entry ``entry``; refused unless it is a relative path that stays
    inside ``directory`` once symlinks and ``..`` are resolved."""
    manifest = directory / MANIFEST
    if not isinstance(name, str) or not name:
        raise ValueError(f"{manifest}: {entry} must be a path relative to the corpus folder, got {name!r}")
    if Path(name).is_absolute():
        raise ValueError(f"{manifest}: {entry} is an absolute path ({name}); corpus paths must be relative")
    root = directory.resolve()
    try:
        inside = (root / name).resolve().is_relative_to(root)
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise ValueError(f"{manifest}: {entry} ({name}) cannot be resolved: {err}") from err
    if not inside:
        raise ValueError(f"{manifest}: {entry} ({name}) points outside the corpus folder {root}")
    return directory / name


class Corpus:
    """Random access to the cell sets of a prepared corpus.

    Parameters
    ----------
    directory
        A directory written by :func:`prepare_corpus`.
    vocabulary
        Gene ids of the model's embedding rows (default: the corpus vocabulary). Genes of a data set
        that are not in it are left out.
    cache_shards
        Shards kept in memory (least recently used are dropped).

    Every path in the manifest must stay inside ``directory``. Opening checks the size of every shard and
    the sha256 of the genes files; a shard's sha256 and arrays are checked when this object first reads it
    (:meth:`verify` checks every file at once). Problems raise ``ValueError`` naming the file.
    ``checksums`` says whether the manifest records them (older ones do not).
    """

    def __init__(self, directory: str | Path, *, vocabulary: Sequence[str] | None = None, cache_shards: int = 4):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path} not found; is {self.directory} a corpus (prepare-corpus)?")
        self.manifest = _read_manifest(manifest_path)
        self._vocabulary_file = _inside(self.directory, "vocabulary_file", self.manifest["vocabulary_file"])
        self._genes_files = {
            d["id"]: _inside(self.directory, f"datasets[{i}].genes_file", d["genes_file"])
            for i, d in enumerate(self.manifest["datasets"])
        }
        self._shard_files = [
            _inside(self.directory, f"shards[{i}].file", s["file"]) for i, s in enumerate(self.manifest["shards"])
        ]
        self.checksums = CHECKSUM in self.manifest
        if not self.checksums:
            warnings.warn(
                f"{manifest_path} records no checksums (written by an older opencellplm), so changed or swapped "
                "files cannot be detected; prepare the corpus again to add them",
                UserWarning,
                stacklevel=2,
            )
        problems = []  # every shard is there, with the size the manifest records (a stat each)
        for path, info in zip(self._shard_files, self.shards):
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif self.checksums and path.stat().st_size != info["bytes"]:
                problems.append(
                    f"{path}: {path.stat().st_size} bytes, the manifest records {info['bytes']}; the file changed "
                    "after prepare-corpus"
                )
        if problems:
            raise ValueError("\n".join(problems))
        if vocabulary is None:
            vocabulary = _read_genes(self._vocabulary_file, self.manifest["n_genes"], self.manifest.get(CHECKSUM))
        position = {g: i for i, g in enumerate(vocabulary)}
        self.vocabulary = list(vocabulary)
        self._columns, self._gene_index, self._n_genes = {}, {}, {}
        for d in self.manifest["datasets"]:
            genes = _read_genes(self._genes_files[d["id"]], d["n_genes"], d.get("genes_sha256"))
            self._n_genes[d["id"]] = len(genes)
            columns = np.array([j for j, g in enumerate(genes) if g in position], dtype=np.int64)
            if columns.size == 0:
                warnings.warn(
                    f"no gene of data set {d['file']} is in the vocabulary; its sets are skipped", stacklevel=2
                )
            self._columns[d["id"]] = columns
            self._gene_index[d["id"]] = torch.tensor([position[genes[j]] for j in columns], dtype=torch.long)
        if not any(c.size for c in self._columns.values()):
            raise ValueError("no data set of the corpus shares a gene with the vocabulary")
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._cache_shards = cache_shards
        self._hashed: set[int] = set()  # shards whose sha256 this object has checked

    @property
    def shards(self) -> list[dict]:
        """Per shard: ``file``, ``n_sets``, ``n_cells`` (and ``bytes``, ``sha256`` since checksums are recorded)."""
        return self.manifest["shards"]

    def shard(self, index: int) -> dict[str, np.ndarray]:
        """The arrays of shard ``index`` (kept in a small LRU cache; its sha256 is checked at the first read)."""
        if index in self._cache:
            self._cache[index] = self._cache.pop(index)  # most recently used last
        else:
            if index not in self._hashed:
                _check_sha256(self._shard_files[index], self.shards[index].get("sha256"))
                self._hashed.add(index)
            self._cache[index] = self._read_shard(index)
            while len(self._cache) > self._cache_shards:
                self._cache.pop(next(iter(self._cache)))
        return self._cache[index]

    def verify(self) -> list[str]:
        """Check every file against the manifest: the sha256 of the vocabulary, of the genes files and of every
        shard, and the arrays of every shard. Returns the problems, one a file (none: the corpus is intact).

        A manifest written before checksums were recorded gets the array checks only (see :attr:`checksums`).
        """
        problems = []
        texts = [(self._vocabulary_file, self.manifest.get(CHECKSUM))]
        texts += [(self._genes_files[d["id"]], d.get("genes_sha256")) for d in self.manifest["datasets"]]
        for path, sha256 in texts:
            try:
                _check_sha256(path, sha256)
            except ValueError as err:
                problems.append(str(err))
        for index, info in enumerate(self.shards):
            try:
                _check_sha256(self._shard_files[index], info.get("sha256"))
                self._read_shard(index)
            except ValueError as err:
                problems.append(str(err))
        return problems

    def _read_shard(self, index: int) -> dict[str, np.ndarray]:
        path = self._shard_files[index]
        arrays = _read_npz(path)
        problems = [f"array {k!r} is missing" for k in SHARD_ARRAYS if k not in arrays]
        problems += [
            f"array {k!r} is {arrays[k].dtype}, not {np.dtype(dtype)}"
            for k, dtype in SHARD_ARRAYS.items()
            if k in arrays and arrays[k].dtype != dtype
        ]
        problems = problems or self._layout_problems(self.shards[index], arrays)
        if problems:
            raise ValueError(f"{path}: " + "; ".join(problems))
        return arrays

    def _layout_problems(self, info: dict, a: dict[str, np.ndarray]) -> list[str]:
        """How the arrays of a shard disagree with each other and with the manifest entry ``info``."""
        offsets, indptr = a["set_offsets"], a["indptr"]
        if offsets.ndim != 1 or offsets.size == 0 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            return ["set_offsets does not start at 0 and never decrease"]
        n_sets, n_cells = offsets.size - 1, int(offsets[-1])
        if (n_sets, n_cells) != (info["n_sets"], info["n_cells"]):
            return [
                f"holds {n_sets} sets of {n_cells} cells, the manifest records {info['n_sets']} sets of "
                f"{info['n_cells']} cells"
            ]
        if indptr.shape != (n_cells + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
            return [f"indptr is not {n_cells + 1} offsets that start at 0 and never decrease"]
        nnz = int(indptr[-1])
        shapes = {"indices": (nnz,), "data": (nnz,), "batch": (n_cells,), "source_rows": (n_cells,)}
        shapes |= {"coords": (n_cells, 3), "n_genes": (n_sets,), "dataset": (n_sets,), "coord_dims": (n_sets,)}
        problems = [
            f"array {k!r} has shape {a[k].shape}, not {shape}" for k, shape in shapes.items() if a[k].shape != shape
        ]
        if problems:
            return problems
        unknown = sorted(set(a["dataset"].tolist()) - set(self._n_genes))
        if unknown:
            return [f"data set ids {unknown} are not in the manifest"]
        if any(int(n) != self._n_genes[d] for n, d in zip(a["n_genes"], a["dataset"].tolist())):
            problems.append("n_genes differs from the gene counts of the data sets")
        if not np.isin(a["coord_dims"], (0, 2, 3)).all():
            problems.append("coord_dims holds values other than 0, 2 and 3")
        n_batches = len(self.manifest["batches"])
        if n_cells and (a["batch"].min() < 0 or a["batch"].max() >= n_batches):
            problems.append(f"batch ids outside [0, {n_batches})")
        for k in range(n_sets):
            genes = a["indices"][indptr[offsets[k]] : indptr[offsets[k + 1]]]
            if genes.size and (genes.min() < 0 or genes.max() >= a["n_genes"][k]):
                problems.append(f"set {k} has gene indices outside [0, {a['n_genes'][k]})")
                break
        return problems

    def usable(self, shard: int, k: int) -> bool:
        """Whether set ``k`` of shard ``shard`` has genes in the vocabulary."""
        return self._columns[int(self.shard(shard)["dataset"][k])].size > 0

    def source_rows(self, shard: int, k: int) -> np.ndarray:
        """Rows of the set's cells in their source file (in the set's order)."""
        a = self.shard(shard)
        return a["source_rows"][a["set_offsets"][k] : a["set_offsets"][k + 1]]

    def cell_set(self, shard: int, k: int) -> CellBatch:
        """Set ``k`` of shard ``shard``: counts over the vocabulary genes it has, coordinates scaled to
        [0, 1], corpus-wide batch and data-set ids. Cells with no count in those genes are left out
        (unless that would leave none), as at inference."""
        a = self.shard(shard)
        start, stop = a["set_offsets"][k], a["set_offsets"][k + 1]
        indptr = a["indptr"][start : stop + 1]
        lo, hi = indptr[0], indptr[-1]
        counts = sp.csr_matrix(
            (a["data"][lo:hi], a["indices"][lo:hi], indptr - lo), shape=(stop - start, int(a["n_genes"][k]))
        )
        dataset = int(a["dataset"][k])
        counts = counts[:, self._columns[dataset]]
        cells = np.flatnonzero(counts.getnnz(axis=1) > 0)
        if 0 < len(cells) < counts.shape[0]:
            counts = counts[cells]
        else:
            cells = np.arange(counts.shape[0])
        dims = int(a["coord_dims"][k])
        coords = None
        if dims:
            coords = torch.as_tensor(normalize_coordinates(a["coords"][start:stop, :dims][cells]), dtype=torch.float32)
        return CellBatch(
            counts=scipy_to_torch_csr(counts),
            gene_index=self._gene_index[dataset],
            coords=coords,
            batch=torch.from_numpy(a["batch"][start:stop][cells]),
            dataset=torch.full((len(cells),), dataset, dtype=torch.long),
        )


class CorpusDataset(torch.utils.data.IterableDataset):
    """Stream the cell sets of a prepared corpus as :class:`CellBatch` objects.

    Use it with ``DataLoader(dataset, batch_size=None)``: every item is already one cell set. Ranks
    get whole shards, so their shares can differ in size; the pretraining loop balances sets instead.

    Parameters
    ----------
    directory
        A directory written by :func:`prepare_corpus`.
    vocabulary
        Gene ids of the model's embedding rows (default: the corpus vocabulary).
    rank, world_size
        This process's share of the shards; default: from ``torch.distributed`` when initialised,
        else the whole corpus.
    shuffle, seed
        Shuffle the shard order and the sets within a shard, per epoch (see :meth:`set_epoch`).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        vocabulary: Sequence[str] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        self.corpus = Corpus(directory, vocabulary=vocabulary, cache_shards=1)
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither (then torch.distributed decides)")
        if world_size is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            world_size = torch.distributed.get_world_size() if distributed else 1
            rank = torch.distributed.get_rank() if distributed else 0
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if len(self.corpus.shards) < world_size:
            raise ValueError(
                f"{len(self.corpus.shards)} shards cannot feed {world_size} processes; prepare the corpus with "
                "a smaller --shard-cells (pretraining itself balances sets, not shards: see opencellplm.train)"
            )
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle of the next iteration (call once per epoch on every rank)."""
        self.epoch = epoch

    def shard_indices(self) -> list[int]:
        """The shards this rank (and DataLoader worker) reads this epoch, in order."""
        order = np.arange(len(self.corpus.shards))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(order))
        mine = order[self.rank :: self.world_size]
        worker = torch.utils.data.get_worker_info()
        if worker is not None:
            mine = mine[worker.id :: worker.num_workers]
        return mine.tolist()

    def shard_files(self) -> list[str]:
        return [self.corpus.shards[i]["file"] for i in self.shard_indices()]

    def __iter__(self) -> Iterator[CellBatch]:
        for index in self.shard_indices():
            n_sets = self.corpus.shards[index]["n_sets"]
            order = np.arange(n_sets)
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.epoch, index]).permutation(n_sets)
            for k in order:
                if self.corpus.usable(index, int(k)):
                    yield self.corpus.cell_set(index, int(k))
