"""Cell sets: the groups of cells that attend to each other in one forward call.

A set is a sample (an ``obs`` label; by default the whole data set). A sample larger than
``max_cells`` is split into ``ceil(n / max_cells)`` near-equal parts:

* ``"tiles"`` (the default when coordinates exist): recursive cuts across the longest side at the
  quantile that balances the parts, so that neighbours stay in the same set;
* ``"random"`` (the default otherwise): a seeded partition, shuffled within windows of
  ``WINDOW_SETS`` sets taken in input order, so that a backed file is still read in local blocks;
* ``"consecutive"``: chunks in input order (what the official pipeline does).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import pandas as pd

Partition = Literal["auto", "tiles", "random", "consecutive"]
WINDOW_SETS = 16


def cell_sets(
    samples: pd.Series | np.ndarray | None,
    n_cells: int,
    max_cells: int | None = None,
    *,
    coords: np.ndarray | None = None,
    keep: np.ndarray | None = None,
    partition: Partition = "auto",
    seed: int = 0,
) -> list[np.ndarray]:
    """Row indices of each cell set, in a deterministic order.

    Parameters
    ----------
    samples
        Sample label per cell, or None (one sample). Samples come in sorted label order.
    n_cells
        Number of rows.
    max_cells
        Largest set; None keeps each sample whole.
    coords
        (n_cells, 2 or 3) coordinates, used by the ``"tiles"`` partition.
    keep
        Boolean mask of the rows to place (others, e.g. empty cells, are left out).
    partition
        How to split a large sample (see the module docstring); ``"auto"`` is tiles with
        coordinates, random without.
    seed
        Seed of the random partition.
    """
    if max_cells is not None and (
        not isinstance(max_cells, int | np.integer) or isinstance(max_cells, bool) or max_cells < 1
    ):
        raise ValueError(f"max_cells must be a positive integer or None, got {max_cells!r}")
    if partition not in ("auto", "tiles", "random", "consecutive"):
        raise ValueError(f"partition={partition!r}; choose auto, tiles, random or consecutive")
    if partition == "tiles" and coords is None:
        raise ValueError("partition='tiles' needs coordinates")
    if partition == "auto":
        partition = "tiles" if coords is not None else "random"
    sets: list[np.ndarray] = []
    for i, rows in enumerate(_samples(samples, n_cells)):
        if keep is not None:
            rows = rows[keep[rows]]
        if len(rows) == 0:
            continue
        if max_cells is None or len(rows) <= max_cells:
            sets.append(rows)
        elif partition == "consecutive":
            sets += [rows[s : s + max_cells] for s in range(0, len(rows), max_cells)]
        elif partition == "tiles":
            sets += spatial_tiles(rows, coords[rows], _n_parts(len(rows), max_cells))
        else:
            sets += _random_sets(rows, max_cells, np.random.default_rng([seed, i]))
    return sets


def _samples(samples, n_cells: int) -> Iterator[np.ndarray]:
    if samples is None:
        yield np.arange(n_cells)
        return
    codes, labels = pd.factorize(np.asarray(samples), sort=True)
    if (codes < 0).any():
        raise ValueError(f"{int((codes < 0).sum())} cells have no sample label")
    order = np.argsort(codes, kind="stable")  # rows grouped by sample, input order inside
    bounds = np.searchsorted(codes[order], np.arange(len(labels) + 1))
    for i in range(len(labels)):
        yield order[bounds[i] : bounds[i + 1]]


def _n_parts(n: int, max_cells: int) -> int:
    return -(-n // max_cells)


def _sizes(n: int, parts: int) -> list[int]:
    """``parts`` near-equal sizes summing to ``n``."""
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


def spatial_tiles(rows: np.ndarray, coords: np.ndarray, parts: int) -> list[np.ndarray]:
    """Split ``rows`` into ``parts`` spatially compact, near-equal sets (recursive balanced cuts)."""
    if parts <= 1:
        return [np.sort(rows)]
    axis = int(np.argmax(coords.max(0) - coords.min(0)))  # cut across the longest side
    left_parts = parts // 2
    n_left = round(len(rows) * left_parts / parts)
    order = np.argsort(coords[:, axis], kind="stable")
    left, right = order[:n_left], order[n_left:]
    return spatial_tiles(rows[left], coords[left], left_parts) + spatial_tiles(
        rows[right], coords[right], parts - left_parts
    )


def _random_sets(rows: np.ndarray, max_cells: int, rng: np.random.Generator) -> list[np.ndarray]:
    sizes = _sizes(len(rows), _n_parts(len(rows), max_cells))
    sets, start = [], 0
    for w in range(0, len(sizes), WINDOW_SETS):
        window_sizes = sizes[w : w + WINDOW_SETS]
        window = rng.permutation(rows[start : start + sum(window_sizes)])
        bounds = np.cumsum([0, *window_sizes])
        sets += [np.sort(window[bounds[k] : bounds[k + 1]]) for k in range(len(window_sizes))]
        start += sum(window_sizes)
    return sets


def normalize_coordinates(coords: np.ndarray) -> np.ndarray:
    """Scale one set's coordinates into [0, 1], one factor for all axes (shapes are kept)."""
    low = coords.min(0)
    extent = float((coords.max(0) - low).max())
    return (coords - low) / extent if extent > 0 else np.zeros_like(coords)
