"""The benchmark report: tables, a computed verdict and figures from the results of ``opencellplm benchmark``.

The input is the run folder's ``results.json`` (schema version 1) and the ``.npz`` artifacts it names, paths
relative to the folder. :func:`write_report` writes ``report.md`` and PNGs under ``figures/``;
:func:`readme_section` gives the same tables without figures, which :func:`update_readme` places between the
README's ``<!-- benchmark-results:start -->`` and ``<!-- benchmark-results:end -->`` markers.

The report is meant to let a reader decide whether CellPLM beats simple baselines, so it hides nothing:

* every cell is the mean over the seeds that succeeded, with the sample sd, and a row says how many seeds it holds
  (the untrained architecture, ``cellplm_untrained``, has one record per random initialisation, several per seed:
  its cells are the mean and sd over all of them);
* the best mean of each metric column is bold, ties (at the shown precision) all bold;
* one computed sentence per data set compares the best CellPLM-family method with the best baseline, metric by
  metric: a win or a loss only when the gap exceeds the combined sd over seeds, else a tie within sd (with one
  seed no spread is measured, and the sentence says so instead of calling a win); the untrained architecture is
  not a candidate there: a second sentence (and a second glance table) compares the pretrained model zero-shot
  with it, by the same rule, so that "pretraining helps" means ahead of the spread of random networks;
* failed and skipped runs are listed with their reason under the table of their data set;
* simulated data sets are reported apart, in a section labelled as such.

Every file is written to a temporary name in its folder and renamed into place, so a reader never sees half of
one; nothing this module did not write is deleted or changed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._palette import category_colours

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
README_START = "<!-- benchmark-results:start -->"
README_END = "<!-- benchmark-results:end -->"

CELLPLM = "cellplm"
BASELINE = "baseline"
#: The pretrained model zero-shot, and the same architecture with random weights (records with an ``init``: one per
#: initialisation, several per seed). The untrained rows are a reference, compared with the zero-shot rows alone.
ZERO_SHOT = "cellplm_zero_shot"
UNTRAINED = "cellplm_untrained"
#: Family colours for the figures (colour-blind safe pair).
FAMILY_COLOURS = {CELLPLM: "#d95f02", BASELINE: "#7570b3"}
FAMILY_NAMES = {CELLPLM: "CellPLM", BASELINE: "baseline"}
#: The resource columns after the metrics: record key and column label.
TIMINGS = (("wall_s", "wall s"), ("peak_mb", "peak MB (rise)"))
DPI = 110
#: A wall-time axis switches to log scale when the slowest method is this many times slower than the fastest.
LOG_TIME_RATIO = 20.0
#: Reasons longer than this are cut in the report (results.json keeps them whole).
MAX_REASON_CHARS = 400

SummaryTables = dict[tuple[str, str], pd.DataFrame]


# ------------------------------------------------------------------------------------------------ model
@dataclass(frozen=True)
class _Metric:
    key: str
    label: str
    better: str | None  # "higher", "lower", or None: shown, but neither bolded nor compared


@dataclass
class _Task:
    key: str
    title: str
    protocol: str
    metrics: list[_Metric]
    primary: str | None


@dataclass
class _Pair:
    """One (task, data set) with its records."""

    task: str
    dataset: str
    simulated: bool
    records: list[dict[str, Any]] = field(default_factory=list)


def _float(value: Any) -> float:
    """A metric or timing as a float, NaN when absent or not a number (``null``, ``NaN``, a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _check_results(results: Any) -> None:
    if not isinstance(results, dict):
        raise ValueError(f"benchmark results must be a dict (the content of {RESULTS_FILE}), not {type(results)}")
    version = results.get("schema_version")
    if version is None:
        logger.warning("the benchmark results declare no schema_version; reading them as version %d", SCHEMA_VERSION)
    elif version != SCHEMA_VERSION:
        raise ValueError(
            f"benchmark results have schema_version {version!r}; this report reads version {SCHEMA_VERSION}"
        )
    if not isinstance(results.get("records", []), list):
        raise ValueError("benchmark results: 'records' must be a list")
    if not isinstance(results.get("tasks", {}), dict):
        raise ValueError("benchmark results: 'tasks' must be a dict")


def _records(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in results.get("records", []) if isinstance(r, dict)]


def _tasks(results: dict[str, Any]) -> dict[str, _Task]:
    """The tasks in report order: those of ``results["tasks"]``, then any only named by records."""
    declared = results.get("tasks", {})
    records = _records(results)
    tasks: dict[str, _Task] = {}
    for key, meta in declared.items():
        meta = meta if isinstance(meta, dict) else {}
        metrics = []
        for mkey, mmeta in (meta.get("metrics") or {}).items():
            mmeta = mmeta if isinstance(mmeta, dict) else {}
            better = mmeta.get("better")
            if better not in ("higher", "lower"):
                logger.warning(
                    "task %s, metric %s: 'better' is %r, so it is neither bolded nor compared", key, mkey, better
                )
                better = None
            metrics.append(_Metric(mkey, str(mmeta.get("label") or mkey), better))
        primary = meta.get("primary")
        tasks[key] = _Task(key, str(meta.get("title") or key), str(meta.get("protocol") or ""), metrics, primary)
    for record in records:
        key = record.get("task")
        if key not in tasks:
            logger.warning("records name task %r, which results['tasks'] does not describe", key)
            tasks[key] = _Task(key, str(key), "", [], None)
    # Metrics that records carry but the task does not declare are shown too, after the declared ones.
    for record in records:
        task = tasks[record.get("task")]
        known = {m.key for m in task.metrics}
        for mkey in record.get("metrics") or {}:
            if mkey not in known:
                logger.warning("task %s: metric %r is not declared; shown without a better direction", task.key, mkey)
                task.metrics.append(_Metric(mkey, mkey, None))
                known.add(mkey)
    for task in tasks.values():
        directed = [m.key for m in task.metrics if m.better]
        if task.primary not in directed:
            task.primary = directed[0] if directed else None
    return tasks


def _pairs(results: dict[str, Any], tasks: dict[str, _Task]) -> list[_Pair]:
    """Every (task, data set) with records, in task order then the order data sets first appear."""
    found: dict[tuple[str, str], _Pair] = {}
    for record in _records(results):
        key = (record.get("task"), record.get("dataset"))
        if key not in found:
            found[key] = _Pair(key[0], str(key[1]), False)
        found[key].records.append(record)
    for pair in found.values():
        pair.simulated = any(bool(r.get("simulated")) for r in pair.records)
    order = {task: i for i, task in enumerate(tasks)}
    return sorted(found.values(), key=lambda p: order[p.task])  # stable: data sets keep their order


def _family(record: dict[str, Any]) -> str:
    # Anything that is not declared a CellPLM variant counts as a baseline: CellPLM never gains by a typo.
    return CELLPLM if record.get("family") == CELLPLM else BASELINE


def _method(record: dict[str, Any]) -> str:
    method = record.get("method")
    return "(data set)" if method in (None, "") else str(method)


# ------------------------------------------------------------------------------------------------ tables
def _summary(pair: _Pair, task: _Task) -> pd.DataFrame:
    quantities = [m.key for m in task.metrics] + [key for key, _ in TIMINGS]
    columns = ["family", "n_seeds", "n_runs"] + [f"{q}_{stat}" for q in quantities for stat in ("mean", "sd", "n")]
    ok = [r for r in pair.records if r.get("status") == "ok"]
    methods: dict[str, str] = {}
    for record in ok:
        methods.setdefault(_method(record), _family(record))
    # CellPLM family first, each family in the order its methods first appear.
    ordered = [m for m, f in methods.items() if f == CELLPLM] + [m for m, f in methods.items() if f != CELLPLM]
    rows = []
    for method in ordered:
        mine = [r for r in ok if _method(r) == method]
        seeds = [str(r.get("seed")) for r in mine]
        runs = [(seed, str(r.get("init"))) for seed, r in zip(seeds, mine)]  # an untrained row: an init per record
        if len(set(runs)) < len(runs):
            logger.warning("%s / %s / %s: several ok records share a seed (%s)", pair.task, pair.dataset, method, seeds)
        row: dict[str, Any] = {"family": methods[method], "n_seeds": len(set(seeds)), "n_runs": len(mine)}
        for q in quantities:
            timing = q in {key for key, _ in TIMINGS}
            values = np.array([_float(r.get(q) if timing else (r.get("metrics") or {}).get(q)) for r in mine])
            values = values[np.isfinite(values)]
            row[f"{q}_mean"] = float(values.mean()) if values.size else math.nan
            row[f"{q}_sd"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
            row[f"{q}_n"] = int(values.size)
        rows.append(row)
    frame = pd.DataFrame(rows, index=pd.Index(ordered, name="method"), columns=columns)
    frame.attrs.update(task=pair.task, dataset=pair.dataset, simulated=pair.simulated)
    return frame


def summary_tables(results: dict[str, Any]) -> SummaryTables:
    """Mean and sample sd over seeds per method and metric, one table per (task, data set).

    Parameters
    ----------
    results
        The content of ``results.json`` (schema version 1).

    Returns
    -------
    dict
        ``{(task, dataset): frame}`` in report order (tasks as in ``results["tasks"]``, data sets as they first
        appear). Each frame has one row per method with at least one ``"ok"`` record (index ``method``; CellPLM
        family first, then baselines), and the columns ``family`` (``"cellplm"`` or ``"baseline"``),
        ``n_seeds`` (the seeds of its ``"ok"`` records), ``n_runs`` (its ``"ok"`` records: more than its seeds for
        the untrained architecture, whose records are one per random initialisation, several per seed; the mean
        and sd are over all of them), then for each of the task's metrics (declared order) and for
        ``wall_s`` and ``peak_mb``: ``<key>_mean``, ``<key>_sd`` (sample sd, ddof 1; NaN with one value) and
        ``<key>_n`` (the seeds with a value: ``null`` values are left out). Only ``"ok"`` records count; a
        (task, data set) without any has an empty frame. ``frame.attrs`` holds ``task``, ``dataset`` and
        ``simulated``.
    """
    _check_results(results)
    tasks = _tasks(results)
    return {(p.task, p.dataset): _summary(p, tasks[p.task]) for p in _pairs(results, tasks)}


def _fmt(value: float, *, timing: bool = False) -> str:
    """3 decimals for scores (3 significant digits when tiny or huge), 1 decimal for timings."""
    if not math.isfinite(value):
        return "—"
    if timing:
        return f"{value:.2g}" if 0 < abs(value) < 0.05 else f"{value:.1f}"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.3f}"
    return f"{value:.3g}"


def _shown(value: float) -> float:
    """``value`` at the precision the table shows: bold and ties are decided on what the reader sees."""
    return float(_fmt(value)) if math.isfinite(value) else math.nan


def _cell(frame: pd.DataFrame, method: str, key: str, *, timing: bool = False) -> str:
    mean, sd, n = frame.at[method, f"{key}_mean"], frame.at[method, f"{key}_sd"], frame.at[method, f"{key}_n"]
    text = _fmt(mean, timing=timing)
    if math.isfinite(mean) and n > 1 and math.isfinite(sd):
        decimals = len(text.split(".")[1]) if "." in text and "e" not in text else None
        text += f" ± {sd:.{decimals}f}" if decimals is not None else f" ± {_fmt(sd, timing=timing)}"  # as the mean
    if 0 < n < frame.at[method, "n_runs"]:
        text += f" (n={n})"  # some seeds gave no value for this metric
    return text


def _seeds_cell(frame: pd.DataFrame, method: str) -> str:
    """The seeds of a row, and its random initialisations per seed where it has several (the untrained rows)."""
    seeds, runs = int(frame.at[method, "n_seeds"]), int(frame.at[method, "n_runs"])
    if runs == seeds:
        return str(seeds)
    return f"{seeds} × {runs // seeds} inits" if runs % seeds == 0 else f"{seeds} ({runs} inits)"


def _best_methods(frame: pd.DataFrame, metric: _Metric) -> set[str]:
    if metric.better is None or frame.empty:
        return set()
    shown = frame[f"{metric.key}_mean"].map(_shown).dropna()
    if shown.empty:
        return set()
    best = shown.max() if metric.better == "higher" else shown.min()
    return set(shown.index[shown == best])


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(frame: pd.DataFrame, task: _Task) -> str:
    header = ["method", "family", "seeds"] + [_escape(m.label) for m in task.metrics] + [lab for _, lab in TIMINGS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    best = {m.key: _best_methods(frame, m) for m in task.metrics}
    for method in frame.index:
        cells = [f"`{_escape(method)}`", FAMILY_NAMES[frame.at[method, "family"]], _seeds_cell(frame, method)]
        for metric in task.metrics:
            text = _cell(frame, method, metric.key)
            cells.append(f"**{text}**" if method in best[metric.key] else text)
        cells += [_cell(frame, method, key, timing=True) for key, _ in TIMINGS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ verdict
@dataclass
class _Comparison:
    metric: _Metric
    cellplm: tuple[str, float, float] | None  # (method, mean, sd) of the best CellPLM-family method
    baseline: tuple[str, float, float] | None

    @property
    def outcome(self) -> str:
        """``"win"`` or ``"loss"`` only beyond the seeds' spread; ``"tie"`` within it (or equal as shown);
        ``"ahead"`` or ``"behind"`` when no spread was measured (one seed); ``"missing"`` without both sides."""
        if self.cellplm is None or self.baseline is None:
            return "missing"
        mine, theirs = _shown(self.cellplm[1]), _shown(self.baseline[1])
        if mine == theirs or self.within_sd:
            return "tie"
        better = (mine > theirs) == (self.metric.better == "higher")
        if self.spread is None:
            return "ahead" if better else "behind"
        return "win" if better else "loss"

    @property
    def spread(self) -> float | None:
        """The combined seed sd of the two sides (``sqrt(sd1**2 + sd2**2)`` of those measured); None when
        neither was measured (one seed each)."""
        if self.cellplm is None or self.baseline is None:
            return None
        spreads = [sd for sd in (self.cellplm[2], self.baseline[2]) if math.isfinite(sd)]
        return float(np.hypot(*spreads)) if len(spreads) == 2 else (spreads[0] if spreads else None)

    @property
    def within_sd(self) -> bool:
        """Whether the gap is no larger than the combined seed sd (a gap the seeds alone could make)."""
        spread = self.spread
        return spread is not None and abs(self.cellplm[1] - self.baseline[1]) <= spread


def _best_of(frame: pd.DataFrame, family: str, metric: _Metric) -> tuple[str, float, float] | None:
    """The best method of ``family`` on ``metric`` (method, mean, sd); the untrained architecture is a reference,
    never CellPLM's best (it is compared with the zero-shot rows apart, :func:`_against_untrained`)."""
    means = frame.loc[(frame["family"] == family) & (frame.index != UNTRAINED), f"{metric.key}_mean"].dropna()
    if means.empty:
        return None
    method = means.idxmax() if metric.better == "higher" else means.idxmin()
    return str(method), float(means[method]), float(frame.at[method, f"{metric.key}_sd"])


def _directed(task: _Task) -> list[_Metric]:
    """The metrics with a direction, the primary metric first."""
    metrics = [m for m in task.metrics if m.better]
    metrics.sort(key=lambda m: m.key != task.primary)  # stable: the others keep their order
    return metrics


def _comparisons(frame: pd.DataFrame, task: _Task) -> list[_Comparison]:
    """One comparison per metric with a direction, the primary metric first."""
    return [_Comparison(m, _best_of(frame, CELLPLM, m), _best_of(frame, BASELINE, m)) for m in _directed(task)]


def _against_untrained(frame: pd.DataFrame, task: _Task) -> list[_Comparison]:
    """The pretrained model zero-shot against the untrained architecture (mean and sd over every initialisation
    of every seed), per metric with a direction, the primary first; empty unless both rows are there."""
    if ZERO_SHOT not in frame.index or UNTRAINED not in frame.index:
        return []

    def side(method: str, metric: _Metric) -> tuple[str, float, float] | None:
        mean = float(frame.at[method, f"{metric.key}_mean"])
        return (method, mean, float(frame.at[method, f"{metric.key}_sd"])) if math.isfinite(mean) else None

    return [_Comparison(m, side(ZERO_SHOT, m), side(UNTRAINED, m)) for m in _directed(task)]


def _phrases(opponent: str, missing: str) -> tuple[dict[str, str], dict[str, str]]:
    """The verbs of a verdict sentence against ``opponent`` (``missing``: whom a metric without both values
    cannot be compared with): for its first clause, and for the later ones."""
    first = {
        "win": f"beats {opponent} on",
        "loss": f"loses to {opponent} on",
        "tie": f"ties with {opponent} on",
        "ahead": f"is ahead of {opponent}, with no spread measured to tell a win, on",
        "behind": f"is behind {opponent}, with no spread measured to tell a loss, on",
        "missing": f"cannot be compared with {missing} on",
    }
    later = {
        "win": "beats it on",
        "loss": "loses on",
        "tie": "ties on",
        "ahead": "is ahead, with no spread measured, on",
        "behind": "is behind, with no spread measured, on",
        "missing": "cannot be compared on",
    }
    return first, later


def _clauses_sentence(
    subject: str, opponent: str, clauses: dict[str, list[str]], prefix: str, *, missing: str | None = None
) -> str:
    first, later = _phrases(opponent, missing or opponent)
    parts = [f"{(first if i == 0 else later)[o]} {_join(texts)}" for i, (o, texts) in enumerate(clauses.items())]
    joined = _join(parts) if len(parts) < 3 else ", ".join(parts[:-1]) + ", and " + parts[-1]
    return _sentence(prefix, f"{subject} {joined}")


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sentence(prefix: str, text: str) -> str:
    text = prefix + text
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def _verdict(frame: pd.DataFrame, task: _Task, *, simulated: bool) -> str:
    """The plain sentence on where CellPLM wins and loses against the best baseline (see :func:`summary_tables`)."""
    prefix = "on this simulated data set, " if simulated else ""
    families = set(frame["family"]) if not frame.empty else set()
    if not families:
        return _sentence(prefix, "no method produced a result on this data set, so there is nothing to compare")
    if CELLPLM not in families:
        return _sentence(
            prefix, "no CellPLM method produced a result, so CellPLM cannot be compared with the baselines"
        )
    if BASELINE not in families:
        return _sentence(prefix, "no baseline produced a result, so CellPLM cannot be compared with a baseline")
    comparisons = _comparisons(frame, task)
    if not comparisons:
        return _sentence(prefix, "no metric of this task has a better direction, so CellPLM is not compared")
    leaders = {c.cellplm[0] for c in comparisons if c.cellplm}
    one_leader = len(leaders) == 1
    clauses: dict[str, list[str]] = {}
    for c in comparisons:
        if c.outcome == "missing":
            side = "CellPLM" if c.cellplm is None else "a baseline"
            text = f"{c.metric.label} (no value for {side})"
        else:
            mine, theirs = _fmt(c.cellplm[1]), _fmt(c.baseline[1])
            if one_leader:
                text = f"{c.metric.label} ({mine} vs {theirs}, {c.baseline[0]}"
            else:
                text = f"{c.metric.label} ({c.cellplm[0]} {mine} vs {c.baseline[0]} {theirs}"
            text += "; within the seeds' sd)" if c.within_sd else "; one seed)" if c.spread is None else ")"
        clauses.setdefault(c.outcome, []).append(text)
    subject = f"CellPLM ({next(iter(leaders))})" if one_leader else "CellPLM"
    return _clauses_sentence(subject, "the best baseline", clauses, prefix, missing="the baselines")


def _untrained_note(frame: pd.DataFrame) -> str:
    seeds, runs = int(frame.at[UNTRAINED, "n_seeds"]), int(frame.at[UNTRAINED, "n_runs"])
    text = f"{runs} random initialisation{'s' if runs > 1 else ''}"
    if seeds == 1:
        return text
    return text + (f", {runs // seeds} per seed" if runs % seeds == 0 else f" over {seeds} seeds")


def _untrained_verdict(frame: pd.DataFrame, task: _Task, *, simulated: bool) -> str:
    """The sentence on what pretraining adds: the zero-shot rows against the untrained architecture's mean, a
    win or a loss only beyond the combined sd (mostly the spread of the random initialisations); "" without
    both rows."""
    comparisons = _against_untrained(frame, task)
    if not comparisons:
        return ""
    clauses: dict[str, list[str]] = {}
    for c in comparisons:
        if c.outcome == "missing":
            side = "the pretrained model" if c.cellplm is None else "the untrained architecture"
            text = f"{c.metric.label} (no value for {side})"
        else:
            sd = f" ± {_fmt(c.baseline[2])}" if math.isfinite(c.baseline[2]) else ""
            text = f"{c.metric.label} ({_fmt(c.cellplm[1])} vs {_fmt(c.baseline[1])}{sd}"
            text += "; within sd)" if c.within_sd else "; no spread measured)" if c.spread is None else ")"
        clauses.setdefault(c.outcome, []).append(text)
    opponent = f"the untrained architecture (`{UNTRAINED}`: {_untrained_note(frame)})"
    prefix = "on this simulated data set, " if simulated else ""
    return _clauses_sentence(f"Pretraining: `{ZERO_SHOT}`", opponent, clauses, prefix)


def _glance_row(pair: _Pair, frame: pd.DataFrame, task: _Task) -> str:
    name = f"{_escape(pair.dataset)} (simulated)" if pair.simulated else _escape(pair.dataset)
    primary = next((m for m in task.metrics if m.key == task.primary), None)
    if primary is None:
        return f"| {_escape(task.title)} | {name} | — | — | — | no metric to compare |"
    c = _Comparison(primary, *(_best_of(frame, f, primary) for f in (CELLPLM, BASELINE))) if not frame.empty else None
    mine = f"{_fmt(c.cellplm[1])} (`{_escape(c.cellplm[0])}`)" if c and c.cellplm else "—"
    theirs = f"{_fmt(c.baseline[1])} (`{_escape(c.baseline[0])}`)" if c and c.baseline else "—"
    if c is None or c.outcome == "missing":
        result = "not compared"
    else:
        result = {
            "win": "CellPLM ahead",
            "loss": "baseline ahead",
            "tie": "tie",
            "ahead": "CellPLM ahead on one seed (no spread measured)",
            "behind": "baseline ahead on one seed (no spread measured)",
        }[c.outcome]
        result += " (within sd)" if c.within_sd else ""
    return f"| {_escape(task.title)} | {name} | {_escape(primary.label)} | {mine} | {theirs} | {result} |"


#: How a comparison with the untrained architecture reads in the glance table: for the primary metric, and counted
#: over all metrics.
_UNTRAINED_RESULT = {
    "win": "pretrained ahead",
    "loss": "untrained ahead",
    "tie": "tie",
    "ahead": "pretrained ahead (no spread measured)",
    "behind": "untrained ahead (no spread measured)",
    "missing": "not compared",
}
_UNTRAINED_COUNT = {
    "win": "ahead",
    "tie": "tie",
    "loss": "behind",
    "ahead": "ahead, no spread",
    "behind": "behind, no spread",
    "missing": "not compared",
}


def _untrained_glance_row(pair: _Pair, frame: pd.DataFrame, task: _Task) -> str | None:
    """A row of the glance table of the zero-shot rows against the untrained architecture (None without both)."""
    comparisons = _against_untrained(frame, task)
    if not comparisons:
        return None
    c = comparisons[0]  # the primary metric
    name = f"{_escape(pair.dataset)} (simulated)" if pair.simulated else _escape(pair.dataset)
    mine = _fmt(c.cellplm[1]) if c.cellplm else "—"
    theirs = "—"
    if c.baseline:
        theirs = _fmt(c.baseline[1]) + (f" ± {_fmt(c.baseline[2])}" if math.isfinite(c.baseline[2]) else "")
        theirs += f" ({_untrained_note(frame)})"
    result = _UNTRAINED_RESULT[c.outcome] + (" (within sd)" if c.within_sd else "")
    outcomes = [x.outcome for x in comparisons]
    counts = ", ".join(f"{words} {outcomes.count(o)}" for o, words in _UNTRAINED_COUNT.items() if o in outcomes)
    return (
        f"| {_escape(task.title)} | {name} | {_escape(c.metric.label)} | {mine} | {theirs} | {result} | "
        f"{counts} (of {len(comparisons)}) |"
    )


# ------------------------------------------------------------------------------------------------ markdown
def _reason(text: Any) -> str:
    if text in (None, ""):
        return "no reason given"
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def _not_run(pair: _Pair) -> str:
    """Failed and skipped records, one line per (method, status, reason) with their seeds."""
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    for record in pair.records:
        status = record.get("status")
        if status == "ok":
            continue
        status = status if status in ("failed", "skipped") else f"status {status!r}"
        family = f" ({FAMILY_NAMES[_family(record)]})" if record.get("method") else ""  # none for a data set
        key = (_method(record), family, status, _reason(record.get("reason")))
        groups.setdefault(key, []).append(str(record.get("seed", "?")))
    if not groups:
        return ""
    lines = ["Failed and skipped runs:", ""]
    for (method, family, status, reason), seeds in groups.items():
        seeds = sorted(seeds, key=_natural)
        seeds_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(seeds)}"
        lines.append(f"- `{method}`{family} {status} on {seeds_text}: {reason}")
    return "\n".join(lines)


def _protocol(task: _Task) -> str:
    lines = [line.strip() for line in task.protocol.strip().splitlines() if line.strip()]
    # Each protocol line its own quoted paragraph: Markdown would otherwise run the two into one.
    return "\n>\n".join(f"> {line}" for line in lines)


def _pair_section(
    pair: _Pair, frame: pd.DataFrame, task: _Task, level: int, figures: dict[tuple[str, str], list[tuple[str, str]]]
) -> list[str]:
    hashes = "#" * level
    if pair.simulated:
        out = [f"{hashes} {task.title}: {pair.dataset} (simulated)", ""]
        out += [f"Simulated data: `{pair.dataset}` is generated by a simulator, not measured cells.", ""]
    else:
        out = [f"{hashes} {pair.dataset}", ""]
    if task.protocol.strip():
        out += [_protocol(task), ""]
    if not frame.empty:
        out += [_table(frame, task), ""]
    steps = _steps_line(pair)
    if steps:
        out += [steps, ""]
    unchanged = _same_as_no_change(pair, task)
    if unchanged:
        out += [unchanged, ""]
    out += [_verdict(frame, task, simulated=pair.simulated), ""]
    untrained = _untrained_verdict(frame, task, simulated=pair.simulated)
    if untrained:
        out += [untrained, ""]
    not_run = _not_run(pair)
    if not_run:
        out += [not_run, ""]
    suffix = " (simulated)" if pair.simulated else ""
    links = figures.get((pair.task, pair.dataset), [])
    return out + _images((f"{kind}: {task.title}, {pair.dataset}{suffix}", link) for kind, link in links)


def _images(items: Iterable[tuple[str, str]]) -> list[str]:
    """Markdown image lines (alt text, relative link), each its own paragraph."""
    out = []
    for alt, link in items:
        out += [f"![{alt}]({link})", ""]
    return out


@dataclass
class _Figures:
    """What write_report drew: links per task and per (task, data set), and what could not be drawn."""

    task: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    pair: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    task_real: set[str] = field(default_factory=set)  # tasks whose figures hold a real data set
    problems: list[str] = field(default_factory=list)


def _body(results: dict[str, Any], level: int, figures: _Figures | None) -> list[str]:
    """The tables part shared by report.md (``level`` 2) and the README section (``level`` 3)."""
    tasks = _tasks(results)
    pairs = _pairs(results, tasks)
    frames = {(p.task, p.dataset): _summary(p, tasks[p.task]) for p in pairs}
    pair_figures = figures.pair if figures else {}
    h = "#" * level
    out = [
        "Cells: mean ± sample sd over the seeds that succeeded (the mean alone for one seed; `(n=k)` when only k "
        "seeds gave the value). **Bold**: the best mean of the column, by the metric's direction, at the shown "
        "precision (ties all bold). CellPLM-family rows come first. Wall s: the method's fit and predict time; "
        "peak MB (rise): how far resident memory rose above its level at the method's start, where the task "
        "measures it (— where not).",
        "",
    ]
    if pairs:
        out += [
            f"{h} At a glance",
            "",
            "Each task's primary metric: the best CellPLM-family method (the untrained architecture aside: it is "
            "compared with the pretrained model below) against the best baseline. A method is "
            'ahead only when the gap exceeds the combined sd over seeds (sqrt(sd1² + sd2²)); "tie (within sd)": '
            "the seeds alone could make the gap. With one seed no spread is measured, and no gap is a win.",
            "",
        ]
        out += [
            "| task | data set | metric | best CellPLM | best baseline | result |",
            "|:---|:---|:---|---:|---:|:---|",
        ]
        ordered = [p for p in pairs if not p.simulated] + [p for p in pairs if p.simulated]
        for pair in ordered:
            out.append(_glance_row(pair, frames[(pair.task, pair.dataset)], tasks[pair.task]))
        out.append("")
        untrained = [_untrained_glance_row(p, frames[(p.task, p.dataset)], tasks[p.task]) for p in ordered]
        untrained = [row for row in untrained if row]
        if untrained:
            out += [
                f"What pretraining adds: `{ZERO_SHOT}` (the pretrained model, no fitting) against `{UNTRAINED}` (the "
                "same architecture with random weights, several initialisations per seed: mean ± sd over all of "
                "them), on each task's primary metric; the last column counts the outcomes over all the task's "
                "metrics. Pretrained ahead only beyond the combined sd, that is beyond the spread of random networks.",
                "",
                f"| task | data set | metric | `{ZERO_SHOT}` | `{UNTRAINED}` | result | all metrics |",
                "|:---|:---|:---|---:|---:|:---|:---|",
                *untrained,
                "",
            ]
    else:
        out += ["No records: the benchmark produced no result.", ""]
    for key, task in tasks.items():
        mine = [p for p in pairs if p.task == key]
        real = [p for p in mine if not p.simulated]
        if not mine and key not in results.get("tasks", {}):
            continue
        out += [f"{h} {task.title} (`{key}`)", ""]
        if not mine:
            out += ["No records for this task.", ""]
        elif not real:
            out += ["This task ran only on simulated data: see *Simulated data* below.", ""]
        for pair in real:
            out += _pair_section(pair, frames[(pair.task, pair.dataset)], task, level + 1, pair_figures)
        if figures and key in figures.task_real:
            out += _images((f"{kind}: {task.title}", link) for kind, link in figures.task.get(key, []))
    simulated = [p for p in pairs if p.simulated]
    if simulated:
        out += [
            f"{h} Simulated data",
            "",
            "These data sets are simulated, not measured: they test whether a method recovers a known, planted "
            "signal, and say less about real cells than the sections above.",
            "",
        ]
        for i, pair in enumerate(simulated):
            task = tasks[pair.task]
            out += _pair_section(pair, frames[(pair.task, pair.dataset)], task, level + 1, pair_figures)
            links = figures.task.get(pair.task, []) if figures else []
            if not links or any(p.task == pair.task for p in simulated[i + 1 :]):
                continue  # the task's figures follow its last simulated data set
            if pair.task in figures.task_real:  # drawn with the real data sets: linked, not shown twice
                joined = ", ".join(f"[{kind}]({link})" for kind, link in links)
                out += [f"Figures of {task.title}, simulated panels marked: {joined}.", ""]
            else:
                out += _images((f"{kind}: {task.title} (simulated)", link) for kind, link in links)
    if figures and figures.problems:
        out += [f"{h} Figures not drawn", ""] + [f"- {p}" for p in figures.problems] + [""]
    return out


def _counts(results: dict[str, Any]) -> str:
    statuses = [r.get("status") for r in _records(results)]
    text = ", ".join(f"{statuses.count(s)} {s}" for s in ("ok", "failed", "skipped"))
    other = len(statuses) - sum(statuses.count(s) for s in ("ok", "failed", "skipped"))
    return text + (f", {other} with another status" if other else "") + f" (of {len(statuses)})"


def _checkpoints(results: dict[str, Any]) -> str:
    seen: dict[tuple[str, str], None] = {}
    for record in _records(results):
        checkpoint = record.get("checkpoint")
        if isinstance(checkpoint, dict):
            seen[(str(checkpoint.get("name") or "?"), str(checkpoint.get("sha256") or ""))] = None
    if not seen:
        return "none recorded"
    return ", ".join(f"{name} (sha256 {sha[:12]})" if sha else f"{name} (no sha256)" for name, sha in seen)


def _wall(results: dict[str, Any]) -> str:
    wall = _float(results.get("wall_s"))
    if not results.get("finished") or not math.isfinite(wall):
        return "not finished (the results may be partial)"
    text = f"{wall:.1f} s" + (f" ({wall / 60:.1f} min)" if wall >= 60 else "")
    return f"{text}, finished {results['finished']}"


def _versions(results: dict[str, Any]) -> str:
    environment = results.get("environment") or {}
    return ", ".join(f"{key} {value}" for key, value in environment.items()) or "not recorded"


def _provenance(results: dict[str, Any]) -> list[str]:
    return [
        f"- Profile: {results.get('profile', '?')}",
        f"- Started: {results.get('started', '?')}; wall time {_wall(results)}",
        f"- Checkpoint: {_checkpoints(results)}",
        f"- Versions: {_versions(results)}",
        f"- Records: {_counts(results)}",
    ]


def _smoke_warning(results: dict[str, Any]) -> list[str]:
    """The quick profile's warning, for the top of the report: its scores say nothing about the model."""
    if results.get("profile") != "quick":
        return []
    sizes = (results.get("settings") or {}).get("profile_settings") or {}
    steps = [sizes.get(f"{task}_steps") for task in ("annotation", "denoising", "imputation", "perturbation")]
    steps = [s for s in steps if isinstance(s, int)]
    span = f"{min(steps)}-{max(steps)}" if steps and min(steps) != max(steps) else str(steps[0]) if steps else "a few"
    return [
        "> **Smoke run (quick profile): these scores mean nothing.** The quick profile only checks that every "
        f"task runs end to end: at most {sizes.get('max_cells', '?')} cells per data set, "
        f"{sizes.get('seeds', '?')} seed(s), and {span} fine-tuning steps per fit, far too few for a "
        "fine-tuned model to learn (a fine-tuned score near chance, or a perturbation prediction equal to "
        '"no change", is expected here). For results, run the full profile (without `--quick`).',
        "",
    ]


#: Baselines that predict no change (the input, or the control profile): a CellPLM row equal to one learnt nothing.
NO_CHANGE = ("no_change", "unchanged")


def _same_as_no_change(pair: _Pair, task: _Task) -> str:
    """Sentences naming the CellPLM rows that score exactly as a no-change baseline of the same seed, at the shown
    precision: on every seed (the row learnt nothing), or on some (its mean and sd mix those seeds with the others).
    A seed counts when every record of the row on it matches (the untrained row has several per seed)."""
    keys = [m.key for m in task.metrics]

    def shown(record: dict[str, Any]) -> tuple[float, ...]:
        return tuple(_shown(_float((record.get("metrics") or {}).get(k))) for k in keys)

    def same(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))

    ok = [r for r in pair.records if r.get("status") == "ok"]
    cellplm: dict[str, dict[Any, list[tuple[float, ...]]]] = {}  # method -> seed -> its records' shown scores
    for record in ok:
        if record.get("family") == CELLPLM:
            cellplm.setdefault(_method(record), {}).setdefault(record.get("seed"), []).append(shown(record))
    always, some = [], []
    named: set[str] = set()
    for null in NO_CHANGE:
        nulls: dict[Any, tuple[float, ...]] = {}
        for record in ok:
            if _method(record) == null:
                nulls.setdefault(record.get("seed"), shown(record))  # one per seed; a repeat is ignored
        if not nulls:
            continue
        for method, seeds in cellplm.items():
            matched = [
                seed for seed, scores in seeds.items() if seed in nulls and all(same(x, nulls[seed]) for x in scores)
            ]
            if not matched or method in named:
                continue
            named.add(method)
            if len(matched) == len(seeds):
                always.append((method, null))
            else:
                listed = ", ".join(str(seed) for seed in sorted(matched, key=str))
                some.append(f"`{_escape(method)}` on seed{'s' if len(matched) > 1 else ''} {listed} (as `{null}`)")
    out = []
    for null in dict.fromkeys(n for _, n in always):
        methods = [m for m, n in always if n == null]
        names = _join([f"`{_escape(m)}`" for m in methods])
        one = len(methods) == 1
        out.append(
            f"{names} {'scores' if one else 'score'} exactly as `{null}`, the prediction of no change: the fit left "
            "it there (a fit keeps its starting state when it never beats it on validation), so "
            f"{'this row says' if one else 'these rows say'} nothing about what CellPLM can learn here."
        )
    if some:
        out.append(
            "Scored exactly as the no-change baseline of the same seed: " + "; ".join(some) + ". A fine-tuned fit "
            "does so when it never beats its starting state on validation and keeps it; the row's mean and sd mix "
            "those seeds with the others."
        )
    return " ".join(out)


def _steps_line(pair: _Pair) -> str:
    """What each fit of the pair ran: the steps at most, and the steps run where the task records them."""
    limits = {
        r["protocol"]["steps"] for r in pair.records if isinstance(r.get("protocol"), dict) and "steps" in r["protocol"]
    }
    if not limits:
        return ""
    run: dict[str, list[str]] = {}
    for record in pair.records:
        ran = (record.get("protocol") or {}).get("steps_run")
        if ran is not None:
            run.setdefault(_method(record), []).append(str(ran))
    text = f"Fine-tuning: at most {', '.join(map(str, sorted(limits)))} steps per fit"
    if run:
        text += "; steps run (per seed): " + "; ".join(f"`{m}` {', '.join(v)}" for m, v in run.items())
    return text + "."


def _report_markdown(results: dict[str, Any], figures: _Figures) -> str:
    lines = ["# opencellplm benchmark report", ""] + _smoke_warning(results) + _provenance(results) + [""]
    lines += _body(results, 2, figures)
    return "\n".join(lines).rstrip() + "\n"


def readme_section(results: dict[str, Any]) -> str:
    """The Markdown of the results tables for the README: the tables of report.md, without the figures.

    Headings start at level 3, to sit under the README's own heading. :func:`update_readme` places this text
    between the ``<!-- benchmark-results:start -->`` and ``<!-- benchmark-results:end -->`` markers.
    """
    _check_results(results)
    head = _smoke_warning(results) + [
        f"Profile {results.get('profile', '?')}, started {results.get('started', '?')}, checkpoint "
        f"{_checkpoints(results)}; records: {_counts(results)}. Versions: {_versions(results)}. The figures are in "
        f"the run folder's {REPORT_FILE}.",
        "",
    ]
    return "\n".join(head + _body(results, 3, None)).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------ files
def _write_atomic(target: Path, write: Callable[[Path], None], *, like: Path | None = None) -> None:
    """Write ``target`` whole or not at all (:func:`~opencellplm.data.output.write_new_file`); ``like``: keep
    that file's mode."""
    from ..data.output import write_new_file

    def write_with_mode(partial: Path) -> None:
        write(partial)
        if like is not None:
            shutil.copymode(like, partial)

    write_new_file(target, write_with_mode, overwrite=True, log=False, recognise=None)  # the caller's own file


def check_readme(readme_path: str | Path) -> str:
    """The text of the README whose benchmark markers :func:`update_readme` fills; raises when it cannot.

    Call it before a benchmark, so that a wrong ``--readme`` fails before the work, not after it.

    Raises
    ------
    FileNotFoundError
        When the file (or its folder) does not exist.
    ValueError
        When either marker is missing or appears more than once, or the end marker comes first.
    """
    path = Path(readme_path)
    if not path.is_file():
        where = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"--readme {path} {where}; give the README whose benchmark markers to fill")
    with open(path, encoding="utf-8", newline="") as handle:  # newline="": keep the file's line endings
        text = handle.read()
    for marker in (README_START, README_END):
        count = text.count(marker)
        if count != 1:
            found = "is missing" if count == 0 else f"appears {count} times"
            raise ValueError(f"{path}: the marker {marker} {found}; it must appear exactly once")
    if text.index(README_END) < text.index(README_START):
        raise ValueError(f"{path}: the marker {README_END} comes before {README_START}")
    return text


def update_readme(readme_path: str | Path, results: dict[str, Any]) -> Path:
    """Replace the text between the README's benchmark markers with :func:`readme_section`.

    Only the text strictly between ``<!-- benchmark-results:start -->`` and ``<!-- benchmark-results:end -->``
    changes; the markers and everything outside them stay byte for byte. The file is replaced atomically and
    keeps its mode.

    Raises
    ------
    ValueError
        When either marker is missing or appears more than once, or the end marker comes first
        (:func:`check_readme`).
    """
    path = Path(readme_path)
    text = check_readme(path)
    start = text.index(README_START) + len(README_START)
    end = text.index(README_END)
    new = text[:start] + "\n" + readme_section(results) + text[end:]
    _write_atomic(path, lambda p: p.write_bytes(new.encode("utf-8")), like=path)
    logger.info("updated the benchmark results in %s", path)
    return path


def _safe(name: Any) -> str:
    """A file-name-safe form of a task or data set name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "unnamed"


def _save(fig: Any, target: Path) -> None:
    _write_atomic(target, lambda p: fig.savefig(p, format="png", dpi=DPI))


def write_report(out_dir: str | Path, results: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir/report.md`` and its figures (``out_dir/figures/*.png``) from benchmark results.

    Parameters
    ----------
    out_dir
        The benchmark's output folder: artifact paths are relative to it.
    results
        The results dict; read from ``out_dir/results.json`` when None.

    Returns
    -------
    Path
        The report's path. Figures are written first and the report last, so it links only figures that exist;
        a figure that cannot be drawn (a missing or malformed artifact) is logged and listed in the report
        instead of stopping it.
    """
    out = Path(out_dir)
    if results is None:
        with open(out / RESULTS_FILE, encoding="utf-8") as handle:
            results = json.load(handle)
    _check_results(results)
    figures_dir = out / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures = _draw_figures(out, figures_dir, results)
    target = out / REPORT_FILE
    text = _report_markdown(results, figures)
    _write_atomic(target, lambda p: p.write_text(text, encoding="utf-8"))
    logger.info("wrote the benchmark report %s", target)
    return target


# ------------------------------------------------------------------------------------------------ figures
def _draw_figures(out: Path, figures_dir: Path, results: dict[str, Any]) -> _Figures:
    tasks = _tasks(results)
    pairs = _pairs(results, tasks)
    frames = {(p.task, p.dataset): _summary(p, tasks[p.task]) for p in pairs}
    drawn = _Figures()

    def attempt(what: str, draw: Callable[..., Path], *args: Any) -> bool:
        try:
            draw(*args)
            return True
        except Exception as error:  # a broken figure must not cost the reader the tables
            logger.warning("could not draw %s: %s", what, error, exc_info=True)
            drawn.problems.append(f"{what}: {_reason(f'{type(error).__name__}: {error}')}")
            return False

    for key, task in tasks.items():
        # Real data sets first, as in the report; the simulated ones are marked in their panel titles.
        mine = [p for p in pairs if p.task == key and not frames[(p.task, p.dataset)].empty]
        mine = [p for p in mine if not p.simulated] + [p for p in mine if p.simulated]
        if not mine:
            continue
        panels = [(p, frames[(p.task, p.dataset)]) for p in mine]
        if not mine[0].simulated:
            drawn.task_real.add(key)
        for kind, name, draw in (("metric bars", "bars", _bars_figure), ("wall time", "time", _time_figure)):
            target = figures_dir / f"{name}_{_safe(key)}.png"
            if attempt(f"{kind} of {key}", draw, task, panels, target):
                drawn.task.setdefault(key, []).append((kind, f"{FIGURES_DIR}/{target.name}"))

    simulated = {(p.task, p.dataset): p.simulated for p in pairs}
    artifacts = results.get("artifacts") or {}
    for kind, name, field_name, draw in (
        ("UMAP", "umap", "umap", _umap_figure),
        ("UMAP by batch and cell type", "umap_batches", "integration_umap", _integration_umap_figure),
        ("spatial map", "spatial", "spatial_map", _spatial_figure),
    ):
        used: set[str] = set()
        for entry in artifacts.get(field_name) or []:
            entry = entry if isinstance(entry, dict) else {}
            pair = (entry.get("task"), entry.get("dataset"))
            label = f"{kind} of {pair[0]} / {pair[1]} (seed {entry.get('seed')})"
            if pair not in simulated or not entry.get("path"):
                why = "no path" if pair in simulated else "no record has this task and data set"
                logger.warning("not drawing the %s: %s", label, why)
                drawn.problems.append(f"{label}: {why}")
                continue
            stem = f"{name}_{_safe(pair[0])}_{_safe(pair[1])}"
            if stem in used:  # another seed of the same (task, data set)
                stem += f"_seed{_safe(entry.get('seed'))}"
            used.add(stem)
            target = figures_dir / f"{stem}.png"
            if attempt(label, draw, out / entry["path"], tasks[pair[0]], entry, simulated[pair], target):
                drawn.pair.setdefault(pair, []).append((kind, f"{FIGURES_DIR}/{target.name}"))
    return drawn


def _figure(width: float, height: float) -> Any:
    # A bare Figure (no pyplot): no global backend switch, nothing kept alive after saving.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _family_legend(fig: Any) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=FAMILY_COLOURS[f], label=FAMILY_NAMES[f]) for f in (CELLPLM, BASELINE)]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)


def _suffix(simulated: bool) -> str:
    return " (simulated)" if simulated else ""


def _hbars(ax: Any, frame: pd.DataFrame, key: str, *, labels: bool) -> None:
    """One horizontal bar per method (first method on top), sd as error bars, coloured by family."""
    y = np.arange(len(frame))[::-1]
    means = frame[f"{key}_mean"].to_numpy(float)
    sds = frame[f"{key}_sd"].to_numpy(float)
    colours = [FAMILY_COLOURS[f] for f in frame["family"]]
    spread = np.nan_to_num(sds) if np.isfinite(sds).any() else None  # one seed: no error bars, not zero-width ones
    ax.barh(y, np.nan_to_num(means), xerr=spread, color=colours, capsize=3, error_kw={"elinewidth": 1})
    for yi, mean in zip(y, means):
        if not math.isfinite(mean):
            ax.text(0, yi, " no value", va="center", fontsize=8, color="0.4")
    ax.set_yticks(y, labels=list(frame.index) if labels else [])
    ax.tick_params(axis="y", length=0 if not labels else 3.5)
    ax.grid(axis="x", color="0.9")
    ax.set_axisbelow(True)


def _bars_figure(task: _Task, panels: list[tuple[_Pair, pd.DataFrame]], target: Path) -> Path:
    metrics = task.metrics or [_Metric("wall_s", "wall s", "lower")]
    longest = max(len(str(m)) for _, frame in panels for m in frame.index)
    rows = [0.9 + 0.32 * len(frame) for _, frame in panels]
    fig = _figure(1.0 + 0.075 * longest + 3.1 * len(metrics), 1.2 + sum(rows))
    axes = fig.subplots(len(panels), len(metrics), squeeze=False, gridspec_kw={"height_ratios": rows})
    for (pair, frame), row in zip(panels, axes):
        for col, (metric, ax) in enumerate(zip(metrics, row)):
            _hbars(ax, frame, metric.key, labels=col == 0)
            direction = f" ({metric.better} is better)" if metric.better else ""
            ax.set_title(f"{pair.dataset}{_suffix(pair.simulated)}\n{metric.label}{direction}", fontsize=10)
    fig.suptitle(f"{task.title} ({task.key}): {_seeds_note(panels)}", fontsize=12)
    _family_legend(fig)
    _save(fig, target)
    return target


def _seeds_note(panels: list[tuple[_Pair, pd.DataFrame]]) -> str:
    """What the bars show: a mean ± sd only where some method has several seeds."""
    counts = [  # records: an untrained row has several (initialisations) per seed, and an sd
        frame["n_runs" if "n_runs" in frame else "n_seeds"].max()
        for _, frame in panels
        if "n_seeds" in frame and not frame.empty
    ]
    return "one seed (no sd)" if counts and max(counts) == 1 else "mean ± sd over seeds"


def _decade_ticks(axis: Any) -> None:
    """Labels at powers of ten only, written plainly (0.1, 1, 10): the default also labels minor ticks within a
    decade, whose labels overlap on a narrow panel."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _time_figure(task: _Task, panels: list[tuple[_Pair, pd.DataFrame]], target: Path) -> Path:
    longest = max(len(str(m)) for _, frame in panels for m in frame.index)
    n_rows = max(len(frame) for _, frame in panels)
    fig = _figure(max(6.0, 1.0 + 0.075 * longest + 3.4 * len(panels)), 2.2 + 0.32 * n_rows)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (pair, frame) in zip(axes, panels):
        _hbars(ax, frame, "wall_s", labels=True)
        values = frame["wall_s_mean"].to_numpy(float)
        values = values[np.isfinite(values) & (values > 0)]
        log = values.size > 1 and values.max() / values.min() > LOG_TIME_RATIO
        if log:  # a wide range: on a linear axis the fast methods would vanish
            ax.set_xscale("log")
            _decade_ticks(ax.xaxis)
            # a time recorded as 0 (under the records' 1 ms rounding) has no bar on a log axis: say so
            for yi, mean in zip(np.arange(len(frame))[::-1], frame["wall_s_mean"].to_numpy(float)):
                if mean == 0:
                    ax.text(values.min(), yi, " < 1 ms", va="center", fontsize=8, color="0.4")
        ax.set_xlabel("wall time per run, s" + (" (log scale)" if log else ""))
        ax.set_title(f"{pair.dataset}{_suffix(pair.simulated)}", fontsize=10)
    fig.suptitle(f"{task.title} ({task.key})\nwall time per method, {_seeds_note(panels)}", fontsize=12)
    _family_legend(fig)
    _save(fig, target)
    return target


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    # No pickles: an artifact is data, and strings must be saved as numpy str arrays.
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _natural(text: str) -> list[Any]:
    """Sort key that puts "type 2" before "type 10"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _grid(fig: Any, n: int, max_cols: int) -> tuple[list[Any], int]:
    cols = min(n, max_cols)
    rows = -(-n // cols)
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n], cols


def _umap_coordinates(rep: np.ndarray) -> np.ndarray:
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(np.zeros((rep.shape[0], 0), dtype=np.float32))
    adata.obsm["X_rep"] = rep.astype(np.float32)
    sc.pp.neighbors(adata, use_rep="X_rep", n_neighbors=min(15, rep.shape[0] - 1), random_state=0)
    sc.tl.umap(adata, random_state=0)
    return np.asarray(adata.obsm["X_umap"])


def _umap_figure(path: Path, task: _Task, entry: dict[str, Any], simulated: bool, target: Path) -> Path:
    data = _load_npz(path)
    if "labels" not in data:
        raise ValueError(f"{path.name} has no 'labels' array")
    labels = data.pop("labels").astype(str)
    if not data:
        raise ValueError(f"{path.name} holds no representation besides 'labels'")
    categories = sorted(set(labels.tolist()), key=_natural)
    colour_of = dict(zip(categories, category_colours(len(categories))))
    longest = max(len(c) for c in categories)  # the legend sits right of the panels, beside the title's end
    width = 3.6 * min(len(data), 3) + 0.8 + 0.075 * longest + 1.2 * (len(categories) > 20)
    fig = _figure(max(width, 7.5), 3.8 * -(-len(data) // 3) + 0.9)
    axes, _ = _grid(fig, len(data), 3)
    for ax, (method, rep) in zip(axes, data.items()):
        ax.set_xticks([])
        ax.set_yticks([])
        rep = np.asarray(rep, dtype=float)
        if rep.ndim != 2 or rep.shape[0] != labels.shape[0]:
            ax.set_title(f"{method}: shape {rep.shape} does not match {labels.shape[0]} labels", fontsize=9)
            continue
        keep = np.isfinite(rep).all(axis=1)
        dropped = int((~keep).sum())
        if keep.sum() < 4:
            ax.set_title(f"{method}: too few cells ({int(keep.sum())})", fontsize=9)
            continue
        xy = _umap_coordinates(rep[keep])
        kept_labels = labels[keep]
        size = float(np.clip(4000 / keep.sum(), 1, 20))
        for category in categories:
            mask = kept_labels == category
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=colour_of[category], linewidths=0)
        note = f", {dropped} left out" if dropped else ""
        ax.set_title(f"{method}\n({int(keep.sum())} cells{note})", fontsize=10)
        ax.set_xlabel("UMAP 1", fontsize=8)
        ax.set_ylabel("UMAP 2", fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=colour_of[c], label=c) for c in categories]
    fig.legend(handles=handles, loc="outside right upper", title="label", fontsize=8, ncols=1 + len(categories) // 25)
    fig.suptitle(
        f"{task.title} / {entry.get('dataset')}{_suffix(simulated)}\nUMAP per representation, coloured by label "
        f"(seed {entry.get('seed')})",
        fontsize=11,
    )
    _save(fig, target)
    return target


def _integration_umap_figure(path: Path, task: _Task, entry: dict[str, Any], simulated: bool, target: Path) -> Path:
    """One row per embedding: its UMAP coloured by batch (left) and by cell type (right)."""
    data = _load_npz(path)
    if "labels" not in data or "batches" not in data:
        raise ValueError(f"{path.name} needs 'labels' and 'batches' arrays")
    colourings = {"batch": data.pop("batches").astype(str), "cell type": data.pop("labels").astype(str)}
    if not data:
        raise ValueError(f"{path.name} holds no representation besides the labels")
    palettes = {}
    for name, values in colourings.items():
        categories = sorted(set(values.tolist()), key=_natural)
        palettes[name] = dict(zip(categories, category_colours(len(categories))))
    fig = _figure(10.5, 3.3 * len(data) + 1.0)
    axes = fig.subplots(len(data), 2, squeeze=False)
    for row, (method, rep) in zip(axes, data.items()):
        rep = np.asarray(rep, dtype=float)
        keep = np.isfinite(rep).all(axis=1)
        xy = _umap_coordinates(rep[keep])
        size = float(np.clip(4000 / max(keep.sum(), 1), 1, 20))
        for ax, (name, values) in zip(row, colourings.items()):
            ax.set_xticks([])
            ax.set_yticks([])
            kept = values[keep]
            for category, colour in palettes[name].items():
                mask = kept == category
                ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=colour, linewidths=0)
            ax.set_title(f"{method}: by {name}", fontsize=10)
    from matplotlib.lines import Line2D

    for name, loc in (("batch", "outside left upper"), ("cell type", "outside right upper")):
        handles = [Line2D([], [], marker="o", linestyle="", color=c, label=k) for k, c in palettes[name].items()]
        fig.legend(handles=handles, loc=loc, title=name, fontsize=8)
    fig.suptitle(
        f"{task.title} / {entry.get('dataset')}{_suffix(simulated)}\nUMAP per embedding, coloured by batch and by "
        f"cell type (seed {entry.get('seed')})",
        fontsize=11,
    )
    _save(fig, target)
    return target


def _spatial_figure(path: Path, task: _Task, entry: dict[str, Any], simulated: bool, target: Path) -> Path:
    data = _load_npz(path)
    missing = [key for key in ("coords", "truth") if key not in data]
    if missing:
        raise ValueError(f"{path.name} lacks {', '.join(missing)}")
    coords = np.asarray(data["coords"], dtype=float)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"{path.name}: coords has shape {coords.shape}; expected (n, 2) or (n, 3)")
    gene = str(data["gene"]) if "gene" in data else "the held-out gene"
    panels = [("truth", np.asarray(data["truth"], dtype=float))]
    panels += [(key.split(":", 1)[1], np.asarray(v, dtype=float)) for key, v in data.items() if key.startswith("pred:")]
    for name, values in panels:
        if values.shape != (coords.shape[0],):
            raise ValueError(f"{path.name}: {name} has shape {values.shape}; expected ({coords.shape[0]},)")
    finite = np.concatenate([v[np.isfinite(v)] for _, v in panels])
    # One colour scale for every panel, clipped at percentiles so that a few extreme cells do not set it.
    low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    if high <= low and (finite > low).any():  # mostly one value (zeros): scale the cells above it
        high = float(np.percentile(finite[finite > low], 99))
    if high <= low:
        low, high = low - 0.5, high + 0.5
    x, y = coords[:, 0], coords[:, 1]
    aspect = (np.ptp(y) or 1.0) / (np.ptp(x) or 1.0)
    cols = min(len(panels), 4)
    width = 3.4 * cols + 1.2
    fig = _figure(width, (3.4 * float(np.clip(aspect, 0.3, 1.5)) + 0.7) * -(-len(panels) // cols) + 0.6)
    axes, _ = _grid(fig, len(panels), cols)
    size = float(np.clip(3000 / coords.shape[0], 0.5, 12))
    image = None
    for ax, (name, values) in zip(axes, panels):
        bad = ~np.isfinite(values)
        if bad.any():
            ax.scatter(x[bad], y[bad], s=size, color="0.85", linewidths=0)
        image = ax.scatter(x[~bad], y[~bad], c=values[~bad], s=size, cmap="viridis", vmin=low, vmax=high, linewidths=0)
        ax.set_title(name, fontsize=10)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.9, label=gene)
    fig.suptitle(
        f"{task.title} / {entry.get('dataset')}{_suffix(simulated)}: held-out gene {gene} (seed {entry.get('seed')})"
        "\ntruth and predictions on one colour scale (1st-99th percentile of all panels)",
        fontsize=11,
    )
    _save(fig, target)
    return target
