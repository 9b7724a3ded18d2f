"""Classification: macro F1, macro precision, accuracy and the confusion matrix (TASKS §4)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ._common import _as_label_array

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassificationScores:
    """Cell type annotation scores.

    Attributes
    ----------
    macro_f1, macro_precision
        Unweighted means of the per-class F1 and precision over ``labels`` (a class never predicted has
        precision 0).
    accuracy
        Share of all cells predicted right.
    labels
        The classes averaged over, in order.
    per_class_f1
        F1 of each class of ``labels``.
    confusion
        Counts, rows the true labels, columns the predicted ones (``labels`` first, then any other label seen
        in ``y_true`` or ``y_pred``, sorted); index named ``"true"``, columns ``"predicted"``.
    n_cells
        Cells scored.
    n_predicted_outside_labels
        Cells whose predicted label is not among ``labels`` (by default: a label absent from ``y_true``); always
        wrong.
    predicted_outside_labels
        Those predicted labels, sorted.
    """

    macro_f1: float
    macro_precision: float
    accuracy: float
    labels: tuple[str, ...]
    per_class_f1: dict[str, float]
    confusion: pd.DataFrame = field(compare=False)
    n_cells: int
    n_predicted_outside_labels: int
    predicted_outside_labels: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (the confusion matrix as nested lists with its label names)."""
        out = {k: v for k, v in asdict(self).items() if k != "confusion"}
        out["labels"] = list(self.labels)
        out["predicted_outside_labels"] = list(self.predicted_outside_labels)
        out["confusion"] = {
            "true": [str(i) for i in self.confusion.index],
            "predicted": [str(c) for c in self.confusion.columns],
            "counts": self.confusion.to_numpy().tolist(),
        }
        return out


def classification_scores(
    y_true: Sequence | np.ndarray | pd.Series,
    y_pred: Sequence | np.ndarray | pd.Series,
    *,
    labels: Sequence[str] | None = None,
) -> ClassificationScores:
    """Macro F1, macro precision, accuracy and the confusion matrix of predicted cell type labels.

    Labels are compared as strings. The macro averages run over ``labels`` (default: the classes present in
    ``y_true``), so a label that only the predictions use lowers the recall (and F1) of the true classes of the
    cells it was given to, but adds no class of its own. scikit-learn's ``f1_score(average="macro")`` without
    ``labels`` averages over the union of both, adding an F1 of 0 per such label: pass
    ``labels=sorted(set(y_true) | set(y_pred))`` for that figure.

    Parameters
    ----------
    y_true, y_pred
        One label per cell. Missing values are refused.
    labels
        Classes to average over.

    Returns
    -------
    ClassificationScores
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    truth = _as_label_array(y_true, "y_true")
    pred = _as_label_array(y_pred, "y_pred")
    if len(truth) != len(pred):
        raise ValueError(f"y_true has {len(truth)} labels but y_pred has {len(pred)}")
    if len(truth) == 0:
        raise ValueError("no cells to score: y_true and y_pred are empty")
    for name, values in (("y_true", truth), ("y_pred", pred)):
        if pd.isna(values).any():
            raise ValueError(f"{name} has {int(pd.isna(values).sum())} missing labels; drop those cells first")
    truth, pred = truth.astype(str), pred.astype(str)
    classes = sorted(set(truth)) if labels is None else [str(c) for c in labels]
    if not classes:
        raise ValueError("labels is empty; pass the classes to average over")
    if len(set(classes)) != len(classes):
        raise ValueError("labels has repeated entries")
    known = set(classes)
    outside = sorted(set(pred) - known)
    n_outside = int(np.isin(pred, outside).sum())
    if n_outside:
        logger.info("classification_scores: %d cells predicted as labels outside the classes: %s", n_outside, outside)

    precision, _, f1, _ = precision_recall_fscore_support(truth, pred, labels=classes, average=None, zero_division=0)
    rows = classes + sorted(set(truth) - known)
    columns = classes + sorted((set(truth) | set(pred)) - known)
    every = list(dict.fromkeys(rows + columns))
    full = confusion_matrix(truth, pred, labels=every)
    position = {label: i for i, label in enumerate(every)}
    confusion = pd.DataFrame(
        full[np.ix_([position[r] for r in rows], [position[c] for c in columns])],
        index=pd.Index(rows, name="true"),
        columns=pd.Index(columns, name="predicted"),
    )
    return ClassificationScores(
        macro_f1=float(np.mean(f1)),
        macro_precision=float(np.mean(precision)),
        accuracy=float(np.mean(truth == pred)),
        labels=tuple(classes),
        per_class_f1={c: float(v) for c, v in zip(classes, f1)},
        confusion=confusion,
        n_cells=len(truth),
        n_predicted_outside_labels=n_outside,
        predicted_outside_labels=tuple(outside),
    )
