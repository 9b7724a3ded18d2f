"""The usual log-normalisation, in one place: each cell's counts scaled to ``TARGET_SUM`` (1e4) and ``log1p``.

Metrics, baselines and the perturbation task all compare profiles on this scale; they share these functions so
that their numbers are on one scale by construction, not by five copies that agree.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Counts per cell after normalisation (``log1p(x / total * TARGET_SUM)``).
TARGET_SUM = 1e4


def size_factors(totals: np.ndarray, target_sum: float | None = TARGET_SUM) -> np.ndarray:
    """``target_sum / total`` per cell, float64, 0 for a cell without counts; ``target_sum=None`` scales to the
    median total of the cells with counts."""
    totals = np.asarray(totals, dtype=np.float64).ravel()
    positive = totals > 0
    if target_sum is None:
        target_sum = float(np.median(totals[positive])) if positive.any() else 1.0
    return np.divide(target_sum, totals, out=np.zeros_like(totals), where=positive)


def log_normalize(counts, *, target_sum: float | None = TARGET_SUM, dtype=np.float64) -> sp.csr_matrix:
    """``log1p(counts / total * target_sum)`` per cell (row), as a new CSR matrix of ``dtype``; the totals are
    over the columns given, summed in the input's dtype (give float64 input for float64 sums), and a cell without
    counts stays 0 (``target_sum=None``: the median total)."""
    counts = sp.csr_matrix(counts)
    scale = size_factors(counts.sum(axis=1), target_sum)
    out = sp.csr_matrix(sp.diags(scale) @ counts, dtype=dtype)
    np.log1p(out.data, out=out.data)
    return out
