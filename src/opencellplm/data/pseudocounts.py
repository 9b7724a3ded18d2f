"""Pseudo counts for data shipped without counts, so that they can enter a negative-binomial model.

CellPLM models counts. Some public data sets only ship transformed values: the Drosophila embryo Drop-seq
matrix is ``log2(1 + c * counts)`` per cell, the BDTNP atlas holds normalised in-situ intensities. These
functions turn such values into non-negative integers on a count-like scale and say what they did; every
result computed from them must say that it was (see the ``note`` they return).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def counts_from_log2(values: np.ndarray) -> tuple[sp.csr_matrix, str]:
    """Approximate counts from ``log2(1 + c_cell * counts)`` values (cells x genes, dense).

    Each cell's smallest non-zero value is taken as one count: ``rint((2**v - 1) / (2**v_min - 1))``. When the
    values were rounded before shipping, larger counts come back only approximately (off by up to one half
    before rounding); zeros stay zeros. Returns the counts (CSR float32) and a note saying how they were made.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("counts_from_log2 needs a 2-D array of finite, non-negative log2(1 + x) values")
    scaled = np.exp2(values) - 1.0
    nonzero = scaled > 0
    smallest = np.where(nonzero, scaled, np.inf).min(axis=1)
    smallest[~np.isfinite(smallest)] = 1.0  # cells without any non-zero value
    counts = np.where(nonzero, np.maximum(np.rint(scaled / smallest[:, None]), 1.0), 0.0)
    note = "pseudo counts: rint((2**v - 1) / (2**v_min - 1)) per cell from log2(1 + scaled counts) values"
    return sp.csr_matrix(counts, dtype=np.float32), note


def counts_from_intensities(values: np.ndarray, *, scale: float = 100.0) -> tuple[sp.csr_matrix, str]:
    """Pseudo counts ``rint(scale * value)`` from non-negative intensities (cells x genes, dense or sparse).

    ``scale`` sets the count scale, and with it the Poisson part of the noise the NB model assumes: with the
    default 100, an intensity of 0.01 is one count and values keep two decimals. Returns the counts (CSR float32)
    and a note saying how they were made.
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    matrix = sp.csr_matrix(values, dtype=np.float64)
    if not np.isfinite(matrix.data).all() or (matrix.data < 0).any():
        raise ValueError("counts_from_intensities needs finite, non-negative values")
    matrix.data = np.rint(matrix.data * scale)
    matrix.eliminate_zeros()
    return matrix.astype(np.float32), f"pseudo counts: rint({scale:g} * intensity)"
