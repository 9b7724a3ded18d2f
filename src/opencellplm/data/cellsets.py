"""Cell sets: the groups of cells that attend to each other in one forward call."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd


def cell_sets(samples: pd.Series | None, n_cells: int, max_cells: int | None = None) -> Iterator[np.ndarray]:
    """Row indices of each cell set, in a deterministic order.

    Samples come in sorted label order; within a sample, cells keep their input order and are cut
    into consecutive chunks of at most ``max_cells`` (``None``: the whole sample in one set).
    Every row appears in exactly one set.
    """
    if max_cells is not None and max_cells < 1:
        raise ValueError(f"max_cells must be a positive integer, got {max_cells}")
    if samples is None:
        groups = [np.arange(n_cells)]
    else:
        codes, labels = pd.factorize(samples, sort=True)
        order = np.argsort(codes, kind="stable")  # rows grouped by sample, input order inside
        bounds = np.searchsorted(codes[order], np.arange(len(labels) + 1))
        groups = [order[bounds[i] : bounds[i + 1]] for i in range(len(labels))]
    for rows in groups:
        step = len(rows) if max_cells is None else max_cells
        for start in range(0, len(rows), max(step, 1)):
            yield rows[start : start + step]
