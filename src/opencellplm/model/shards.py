"""Embedding shared out over processes: which cell sets each rank embeds, the part each rank writes, and the one
output assembled from the parts in the input's cell order.

A set's embedding depends on that set alone, so N processes that embed the sets dealt to them give, assembled,
the embedding one process gives (bit for bit in fp32 on the same kind of device). Each rank writes its part
atomically, stamped with the run's settings; a rerun after a kill keeps the parts of the same settings and redoes
the rest, and a part of other settings is never read into the output.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def write_part(
    folder: Path, rank: int, world_size: int, stamp: str, rows: np.ndarray, embedding: np.ndarray, record: str = ""
) -> Path:
    """Write rank ``rank``'s rows, their embedding and (rank 0) the output's record as JSON, atomically: a kill
    leaves no part, or the whole one."""
    target = part_path(folder, rank, world_size)
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "wb") as f:
        np.savez(f, format=np.array(PART_FORMAT), stamp=np.array(stamp), rows=rows.astype(np.int64),
                 embedding=embedding, record=np.array(record))  # fmt: skip
    os.replace(partial, target)
    return target


def read_part(folder: Path, rank: int, world_size: int, stamp: str) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Rank ``rank``'s rows, embedding and record when its part exists and was written with these settings; else
    None (a part of other settings, or broken, is left out and said so)."""
    path = part_path(folder, rank, world_size)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["format"]) != PART_FORMAT or str(f["stamp"]) != stamp:
                logger.warning("%s was written with other settings: its sets are embedded again", path)
                return None
            return f["rows"], f["embedding"], str(f["record"])
    except (OSError, KeyError, ValueError, EOFError) as err:
        logger.warning("%s cannot be read (%s): its sets are embedded again", path, err)
        return None


def assemble(folder: Path, world_size: int, stamp: str, n_obs: int, dim: int) -> tuple[np.ndarray, str]:
    """The output in the input's cell order from every rank's part (cells in no part are NaN: left out), and rank
    0's record. Raises when a part is missing, of other settings, or two parts claim a cell."""
    out = np.full((n_obs, dim), np.nan, dtype=np.float32)
    claimed = np.zeros(n_obs, dtype=bool)
    record = ""
    for rank in range(world_size):
        part = read_part(folder, rank, world_size, stamp)
        if part is None:
            raise RuntimeError(
                f"the part of rank {rank} is missing or of other settings: {part_path(folder, rank, world_size)}"
            )
        rows, embedding, text = part
        if claimed[rows].any():
            raise RuntimeError(f"rank {rank}'s part repeats cells of another part")
        claimed[rows] = True
        out[rows] = embedding
        record = record or text
    return out, record


PARTS_MARK = "opencellplm-parts"


def parts_folder(target: Path) -> Path:
    """Where the ranks of a run into ``target`` keep their parts (and an exported query): a hidden folder beside
    it, marked by a file of that name, so that nothing else is ever removed with it."""
    target = Path(target)
    return target.with_name(f".{target.name}.parts")


def make_parts_folder(target: Path) -> Path:
    """Create (or reuse) the parts folder of ``target``; refuse one this package did not make."""
    folder = parts_folder(target)
    if folder.exists() and not (folder / PARTS_MARK).is_file():
        raise FileExistsError(
            f"{folder} is in the way and opencellplm did not make it; remove it or choose another --out"
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PARTS_MARK).touch()
    return folder


def remove_parts_folder(target: Path) -> None:
    """Remove what this package wrote in the parts folder of ``target``, then the folder if it is empty."""
    folder = parts_folder(target)
    if not (folder / PARTS_MARK).is_file():
        return
    for entry in folder.iterdir():
        if entry.name == PARTS_MARK:
            continue
        if re.fullmatch(r"\.?part-\d{5}-of-\d{5}\.npz(\.partial)?|\.?query\.h5ad(\.partial|\.json)?", entry.name):
            entry.unlink()
    (folder / PARTS_MARK).unlink()
    with contextlib.suppress(OSError):  # not empty: someone put a file there, which stays
        folder.rmdir()


def discard_empty_parts_folder(target: Path) -> None:
    """Remove the parts folder of ``target`` when it holds nothing but its mark (a run refused, or one that failed
    before any part was written)."""
    folder = parts_folder(target)
    if (folder / PARTS_MARK).is_file() and [p.name for p in folder.iterdir()] == [PARTS_MARK]:
        remove_parts_folder(target)


#: How long a rank waits for the others at a barrier: rank 0 writes the whole output (and exports a SOMA query
#: first) while they wait, which takes far longer than torch's default allows on an atlas.
WAIT = timedelta(hours=12)


def embed_file_sharded(
    model, source, target, *, key_added: str, overwrite: bool, prepare: Callable[[], Any] | None = None, **kwargs: Any
) -> Path:
    """:meth:`CellPLM.embed_file <opencellplm.CellPLM.embed_file>` over the processes of torchrun (every rank calls
    it): rank 0 locks and checks the output (and runs ``prepare``, which writes ``source``), every process embeds
    the sets dealt to it (keeping its part from a killed run of the same settings) and writes its part; rank 0 then
    writes ``target`` from the parts, in the input's cell order, and removes them."""
    from ..train.trainer import Distributed

    source, target = Path(source), Path(target)
    world = Distributed.start(model.device, timeout=WAIT)
    try:
        return _embed_sharded(model, world, source, target, key_added, overwrite, prepare, kwargs)
    finally:
        world.stop()


def _embed_sharded(model, world, source: Path, target: Path, key_added, overwrite, prepare, kwargs) -> Path:
    import torch.distributed as dist

    from .._files import new_folders_removed_on_failure, output_lock
    from .._precision import autocast_dtype
    from ..data.output import check_result_key, check_result_target, write_result_copy

    with contextlib.ExitStack() as held:
        if world.device != model.device:  # under torchrun each process's own GPU
            model.device, model.module = world.device, model.module.to(world.device)
        # rank 0 decides, every rank follows: a refusal, and the settings every part is stamped with
        shared: list[Any] = [None, None, None]
        refusal: Exception | None = None
        if world.main:
            try:
                held.enter_context(new_folders_removed_on_failure(target))  # a refused run leaves none
                held.enter_context(output_lock(target))  # a second run into target fails here, at once
                check_result_target(target, overwrite=overwrite, inputs=[source, model.source.get("path")])
                make_parts_folder(target)
                held.callback(discard_empty_parts_folder, target)  # a run that fails early leaves nothing behind
                if prepare is not None:
                    prepare()
                check_result_key(source, "obsm", key_added, reads=[kwargs.get("spatial_key", "spatial")])
                # the precision every rank uses: "auto" resolves per device, and parts of one run must agree
                precision = kwargs.get("precision", "auto")
                if precision == "auto" and not kwargs.get("official_compat"):
                    precision = "fp32" if autocast_dtype("auto", model.device) is None else "bf16"
                shared[1] = precision
                shared[2] = _stamp(model, source, world.world_size, key_added, kwargs | {"precision": precision})
            except Exception as err:  # noqa: BLE001  handed to every rank, raised on each
                refusal, shared[0] = err, f"{type(err).__name__}: {err}"
        dist.broadcast_object_list(shared, src=0)
        if refusal is not None:
            raise refusal
        if shared[0] is not None:
            raise RuntimeError(f"process 0 refused the run: {shared[0]}")
        kwargs["precision"], stamp = shared[1], shared[2]
        folder = parts_folder(target)
        _together(world, lambda: _embed_part(model, world, source, folder, stamp, kwargs), "embedding its sets")
        write = None
        if world.main:
            dim = model.config.latent.dim

            def compute(adata):
                embedding, record = assemble(folder, world.world_size, stamp, adata.n_obs, dim)
                return embedding, json.loads(record)

            def write():
                reads = [kwargs.get("spatial_key", "spatial")]
                inputs = [model.source.get("path")]
                write_result_copy(source, target, "obsm", key_added, compute, overwrite=overwrite, inputs=inputs,
                                  reads=reads)  # fmt: skip
                remove_parts_folder(target)  # the parts this run's processes wrote

        _together(world, write, "writing the output")
    return target


def _embed_part(model, world, source: Path, folder: Path, stamp: str, kwargs: dict[str, Any]) -> None:
    """This rank's part: kept from a killed run of the same settings, else embedded and written."""
    from ..data.reader import open_h5ad

    if read_part(folder, world.rank, world.world_size, stamp) is not None:
        logger.info("rank %d: keeping its part of an earlier run with the same settings", world.rank)
        return
    with open_h5ad(source) as adata:
        (rows, embedding), record = model._embed(adata, shard=(world.rank, world.world_size), **kwargs)
    done = np.isfinite(embedding).all(1)
    text = json.dumps(record, default=str) if world.main else ""
    write_part(folder, world.rank, world.world_size, stamp, rows[done], embedding[done], text)


def _together(world, step: Callable[[], Any] | None, what: str) -> None:
    """Run ``step`` (None: nothing) on this rank, then learn whether every rank's succeeded: a failure on one
    rank is raised on all (its own error there, a RuntimeError naming it elsewhere), so that none waits for a
    rank that has given up."""
    import torch.distributed as dist

    error: Exception | None = None
    if step is not None:
        try:
            step()
        except Exception as err:  # noqa: BLE001  told to every rank below
            error = err
    errors: list[Any] = [None] * world.world_size
    dist.all_gather_object(errors, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, text) for rank, text in enumerate(errors) if text is not None]
    if failed:
        rank, text = failed[0]
        raise RuntimeError(f"process {rank} failed {what}: {text}")


def _stamp(model, source: Path, world_size: int, key_added: str, settings: dict[str, Any]) -> str:
    """What a part must match to be kept: the input file, the weights as they are in memory (a model changed after
    loading counts as another), the genes, the package, the processes and every setting."""
    from .. import __version__

    weights = hashlib.sha256()
    for name, tensor in model.module.state_dict().items():
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    stat = source.stat()
    return fingerprint(
        {"source": str(source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
         "weights": weights.hexdigest(), "genes": fingerprint({"genes": model.genes, "meta": model.meta}),
         "version": __version__, "device": model.device.type, "world_size": world_size, "key": key_added, **settings}
    )  # fmt: skip
