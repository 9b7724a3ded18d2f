"""What every task's ``score`` returns: one :class:`MethodScore` per method (CellPLM's rows and the baselines', on
the same split and seeds), the methods that were skipped with the reason, and the task's own detail beside them.

The four result classes (:class:`~opencellplm.tasks.AnnotationScores`, :class:`~opencellplm.tasks.DenoisingResult`,
:class:`~opencellplm.tasks.imputation.ImputationResult`, :class:`~opencellplm.tasks.PerturbationResult`) are
:class:`TaskResult`\\ s: the benchmark reads any of them through :attr:`TaskResult.methods`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

Family = Literal["cellplm", "baseline"]


@dataclass(frozen=True)
class MethodScore:
    """One method's scores in a task result.

    Attributes
    ----------
    method
        ``"cellplm_..."`` for CellPLM's rows (zero-shot, fine-tuned, from scratch, ...), else a baseline's name.
    scores
        The task's metrics (e.g. ``macro_f1``; ``rmse``, ``mae``; ``pearson``, ``cosine``), means where the task
        averages over folds or seeds.
    seconds
        Wall time of the method (fit and predict).
    fit_seconds, predict_seconds
        The two parts where they are timed apart (None where a method is timed as one call).
    params
        The method's settings, its seed included where it draws at random (and, for fine-tuning, what the fit did).
    peak_mb
        How far memory rose while it ran, where the task measures it.
    """

    method: str
    scores: dict[str, float]
    seconds: float | None = None
    fit_seconds: float | None = None
    predict_seconds: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    peak_mb: float | None = None

    @property
    def family(self) -> Family:
        return "cellplm" if self.method.startswith("cellplm") else "baseline"


class TaskResult:
    """The shape every task's ``score`` result has: ``methods`` (one :class:`MethodScore` each, CellPLM first) and
    ``skipped`` (method name -> why it did not run). Subclasses are dataclasses that hold these with their own
    detail (confusion matrices, per-fold or per-perturbation rows)."""

    methods: list[MethodScore]
    skipped: dict[str, str]

    def __getitem__(self, method: str) -> MethodScore:
        for entry in self.methods:
            if entry.method == method:
                return entry
        raise KeyError(f"no method {method!r} in this result; it has {[m.method for m in self.methods]}")

    def method_frame(self) -> pd.DataFrame:
        """One row per method: its family, scores, ``seconds``, ``fit_seconds``, ``predict_seconds`` and
        ``peak_mb``."""
        rows = [
            {"method": m.method, "family": m.family}
            | m.scores
            | {
                "seconds": m.seconds,
                "fit_seconds": m.fit_seconds,
                "predict_seconds": m.predict_seconds,
                "peak_mb": m.peak_mb,
            }
            for m in self.methods
        ]
        return pd.DataFrame(rows).set_index("method")


def plain(value: Any) -> float | None:
    """A score as a float, None for a missing one (None or NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value
