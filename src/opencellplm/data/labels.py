"""Missing labels in ``obs`` columns: NaN and None, and the texts they become when a column is written as strings
(``astype(str)`` turns NaN into ``"nan"``). Every task that reads labels (annotation, perturbation) leaves such
cells out instead of learning ``"nan"`` as a cell type or a gene."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Texts of a missing value (compared stripped and lower-cased): how pandas and R write NaN, None and NA as strings.
MISSING_TEXTS = frozenset({"", "nan", "none", "na", "<na>", "null"})


def is_missing_label(value: Any) -> bool:
    """Whether a label is missing: None, NaN, ``pd.NA``, or a string that is blank or the text of a missing value
    (:data:`MISSING_TEXTS`, e.g. ``"nan"`` left by ``astype(str)``)."""
    if isinstance(value, str):
        return value.strip().lower() in MISSING_TEXTS
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # array-like values are not missing labels (and are refused by the parser)
        return False


def label_values(column: pd.Series | np.ndarray | Sequence) -> tuple[np.ndarray, np.ndarray]:
    """The labels of one ``obs`` column (categorical or not) as strings, and the mask of missing ones.

    Returns
    -------
    values, missing
        ``values`` (object array of ``str``): each label as text, ``""`` where it is missing; ``missing`` (bool):
        the cells whose label is missing (:func:`is_missing_label`), which are never parsed as a gene.
    """
    raw = column.to_numpy(dtype=object) if isinstance(column, pd.Series | pd.Index) else np.asarray(column, object)
    missing = np.fromiter((is_missing_label(v) for v in raw), dtype=bool, count=raw.size)
    values = np.asarray(["" if m else str(v) for v, m in zip(raw, missing)], dtype=object)
    return values, missing


def has_label(column: pd.Series | np.ndarray | Sequence) -> np.ndarray:
    """The mask of the cells of one ``obs`` column whose label is not missing (:func:`is_missing_label`)."""
    return ~label_values(column)[1]
