"""Embedding shared out over processes: which cell sets each rank embeds, the part each rank writes, and the one
output assembled from the parts in the input's cell order.

A set's embedding depends on that set alone, so N processes that embed the sets dealt to them give, assembled,
the embedding one process gives (bit for bit in fp32 on the same kind of device). Each rank writes its part
atomically, stamped with the run's settings; a rerun after a kill keeps the parts of the same settings and redoes
the rest, and a part of other settings is never read into the output.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PART_FORMAT = "opencellplm-embedding-part-1"


def deal_sets(sizes: Sequence[int], world_size: int) -> list[list[int]]:
    """The set indices each of ``world_size`` ranks embeds: the largest set first, each to the rank with the fewest
    cells so far (ties to the lower rank), so that ranks finish together; the same on every rank and every run.
    Each rank's indices come back in increasing order."""
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    order = sorted(range(len(sizes)), key=lambda i: (-int(sizes[i]), i))
    load = [(0, rank) for rank in range(world_size)]
    dealt: list[list[int]] = [[] for _ in range(world_size)]
    for index in order:
        cells, rank = heapq.heappop(load)
        dealt[rank].append(index)
        heapq.heappush(load, (cells + int(sizes[index]), rank))
    return [sorted(indices) for indices in dealt]


def fingerprint(settings: dict[str, Any]) -> str:
    """The sha256 of ``settings`` as canonical JSON: what a part must match to be used."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def part_path(folder: Path, rank: int, world_size: int) -> Path:
    return Path(folder) / f"part-{rank:05d}-of-{world_size:05d}.npz"


def write_part(folder: Path, rank: int, world_size: int, stamp: str, rows: np.ndarray, embedding: np.ndarray) -> Path:
    """Write rank ``rank``'s rows and their embedding, atomically (a kill leaves no part, or the whole one)."""
    target = part_path(folder, rank, world_size)
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "wb") as f:
        np.savez(
            f, format=np.array(PART_FORMAT), stamp=np.array(stamp), rows=rows.astype(np.int64), embedding=embedding
        )
    os.replace(partial, target)
    return target


def read_part(folder: Path, rank: int, world_size: int, stamp: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Rank ``rank``'s rows and embedding when its part exists and was written with these settings; else None (a
    part of other settings, or not ours, is left out and said so)."""
    path = part_path(folder, rank, world_size)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["format"]) != PART_FORMAT or str(f["stamp"]) != stamp:
                logger.warning("%s was written with other settings: its sets are embedded again", path)
                return None
            return f["rows"], f["embedding"]
    except (OSError, KeyError, ValueError) as err:
        logger.warning("%s cannot be read (%s): its sets are embedded again", path, err)
        return None


def assemble(folder: Path, world_size: int, stamp: str, n_obs: int, dim: int) -> np.ndarray:
    """The output in the input's cell order from every rank's part; cells in no part are NaN (left out). Raises when
    a part is missing, of other settings, or two parts claim a cell."""
    out = np.full((n_obs, dim), np.nan, dtype=np.float32)
    claimed = np.zeros(n_obs, dtype=bool)
    for rank in range(world_size):
        part = read_part(folder, rank, world_size, stamp)
        if part is None:
            raise RuntimeError(
                f"the part of rank {rank} is missing or of other settings: {part_path(folder, rank, world_size)}"
            )
        rows, embedding = part
        if claimed[rows].any():
            raise RuntimeError(f"rank {rank}'s part repeats cells of another part")
        claimed[rows] = True
        out[rows] = embedding
    return out


def parts_folder(target: Path) -> Path:
    """Where the ranks of a run into ``target`` keep their parts: a hidden folder beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}.parts")


#: How long a rank waits for the others at a barrier: rank 0 writes the whole output (and exports a SOMA query
#: first) while they wait, which takes far longer than torch's default allows on an atlas.
WAIT = timedelta(hours=12)


def embed_file_sharded(
    model, source, target, *, key_added: str, overwrite: bool, prepare: Callable[[], Any] | None = None, **kwargs: Any
) -> Path:
    """:meth:`CellPLM.embed_file <opencellplm.CellPLM.embed_file>` under torchrun: rank 0 checks the output
    (and runs ``prepare``, which writes ``source``), every process embeds the sets dealt to it (keeping a part of
    the same settings from a killed run) and writes its part; rank 0 then writes ``target`` from the parts, in the
    input's cell order, and removes them."""
    import shutil

    import torch.distributed as dist

    from ..data.output import check_result_key, check_result_target, write_result_copy
    from ..data.reader import open_h5ad
    from ..train.trainer import Distributed

    source, target = Path(source), Path(target)
    world = Distributed.start(model.device, timeout=WAIT)
    try:
        if world.device != model.device:  # under torchrun each process's own GPU
            model.device, model.module = world.device, model.module.to(world.device)
        failure = [None]
        if world.main:  # refuse before any work, on every rank: the checks' message comes from rank 0
            try:
                check_result_target(target, overwrite=overwrite, inputs=[source, model.source.get("path")])
                if prepare is not None:
                    prepare()
                check_result_key(source, "obsm", key_added, reads=[kwargs.get("spatial_key", "spatial")])
                parts_folder(target).mkdir(exist_ok=True)
            except Exception as err:  # noqa: BLE001  handed to every rank, raised on each
                failure = [f"{type(err).__name__}: {err}"]
        dist.broadcast_object_list(failure, src=0)
        if failure[0] is not None:
            raise RuntimeError(failure[0]) if not world.main else ValueError(failure[0])
        folder = parts_folder(target)
        stat = source.stat()
        stamp = fingerprint(
            {"source": str(source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "weights": model.source.get("sha256"), "world_size": world.world_size, "key": key_added, **kwargs}
        )  # fmt: skip
        if read_part(folder, world.rank, world.world_size, stamp) is None:
            with open_h5ad(source) as adata:
                embedding, record = model._embed(adata, shard=(world.rank, world.world_size), **kwargs)
            rows = np.flatnonzero(np.isfinite(embedding).all(1))
            write_part(folder, world.rank, world.world_size, stamp, rows, embedding[rows])
            if world.main:
                (folder / "record.json").write_text(json.dumps({"stamp": stamp, "record": record}, default=str))
        else:
            logger.info("rank %d: keeping its part of an earlier run with the same settings", world.rank)
        world.barrier()
        if world.main:
            saved = json.loads((folder / "record.json").read_text())
            if saved["stamp"] != stamp:
                raise RuntimeError(f"{folder / 'record.json'} belongs to a run with other settings")
            dim = model.config.latent.dim

            def compute(adata):
                return assemble(folder, world.world_size, stamp, adata.n_obs, dim), saved["record"]

            reads = [kwargs.get("spatial_key", "spatial")]
            inputs = [model.source.get("path")]
            write_result_copy(
                source, target, "obsm", key_added, compute, overwrite=overwrite, inputs=inputs, reads=reads
            )  # noqa: E501
            shutil.rmtree(folder)  # the parts this run's processes wrote
        world.barrier()
        return target
    finally:
        world.stop()
