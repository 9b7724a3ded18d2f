"""Helpers the metric families share: label arrays and matrix shapes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


def _as_label_array(values, name: str) -> np.ndarray:
    array = np.asarray(pd.Series(values, dtype=object) if not isinstance(values, np.ndarray) else values, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one label per cell (1-D), got shape {array.shape}")
    return array


def _shape(matrix) -> tuple[int, int]:
    shape = matrix.shape if sp.issparse(matrix) else np.shape(matrix)
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D matrix (cells x genes), got shape {shape}")
    return tuple(shape)
