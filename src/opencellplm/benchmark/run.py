"""``run_benchmark``: every task on every data set that suits it, CellPLM and every baseline, into one results.json.

The grid is (task, data set, seed); each unit calls the task's own ``score`` and yields one record per method.
``results.json`` is rewritten whole (atomically) after every unit, so a stopped run continues with the records
it has: a unit with records is not run again, except one that failed. A data set that fails to load, or a unit
that raises, is recorded as failed with the reason, and the rest goes on.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .._files import json_object, marker_problems
from .._threads import thread_settings
from .profiles import Profile, get_profile
from .tasks import SYMBOLS, TASKS, RunContext, UnitResult

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: Declared in results.json: the marker of a benchmark folder, the only kind of existing folder a run writes into.
FORMAT = "opencellplm-benchmark"
RESULTS_FILE = "results.json"
ARTIFACTS_DIR = "artifacts"
#: Settings that must match for a run to continue the records already in its folder.
RESUME_KEYS = ("profile", "checkpoint", "checkpoint_sha256", "profile_settings")


def environment() -> dict[str, Any]:
    """Package versions and the machine, recorded with every result."""
    versions = {}
    for package in ("opencellplm", "torch", "numpy", "scipy", "scanpy", "anndata", "scikit-learn", "pandas"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions | {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        **thread_settings(),
    }


def resolve_names(tasks: Sequence[str] | None, datasets: Sequence[str] | None) -> list[tuple[str, str]]:
    """The (task, data set) pairs to run; unknown names raise ``ValueError`` listing the valid ones."""
    tasks = list(TASKS) if not tasks else list(dict.fromkeys(tasks))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose among {list(TASKS)}")
    known = {d for spec in TASKS.values() for d in spec.datasets}
    if datasets:
        unknown = sorted(set(datasets) - known)
        if unknown:
            raise ValueError(f"unknown data set(s) {unknown}; choose among {sorted(known)}")
    pairs = [(t, d) for t in tasks for d in TASKS[t].datasets if not datasets or d in datasets]
    if not pairs:
        valid = {t: list(TASKS[t].datasets) for t in tasks}
        raise ValueError(f"no task runs on the data sets {list(datasets or [])}; the tasks' data sets are {valid}")
    return pairs


def run_benchmark(
    out: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    seeds: int | None = None,
    checkpoint: str = "cellplm-small",
    profile: str | Profile = "quick",
    progress: bool | None = None,
    artifacts: bool = True,
) -> dict[str, Any]:
    """Run the benchmark into folder ``out`` and return the results (also in ``out/results.json``).

    Parameters
    ----------
    out
        Output folder (created). An existing folder must be empty or hold this benchmark's results.json (any
        other folder is refused before any work: the run writes report.md and figures there). A results.json of
        the same profile and checkpoint is continued: its records are kept and only the missing or failed units
        run; of another profile or checkpoint, ``ValueError``.
    tasks, datasets
        Names to run (default: every task, each on every data set that suits it).
    seeds
        Number of seeds (0, 1, ...); default: the profile's.
    checkpoint
        Shipped model name or checkpoint directory.
    profile
        ``"quick"`` (CI-sized) or ``"full"``, or a :class:`Profile`.
    progress
        Progress bar over the (task, data set, method, seed) grid (None: when the output is a terminal).
    artifacts
        Write the embeddings and predictions the report's plots need (``out/artifacts``).
    """
    from .. import CellPLM

    pairs = resolve_names(tasks, datasets)
    profile = get_profile(profile) if isinstance(profile, str) else profile
    n_seeds = profile.seeds if seeds is None else seeds
    if n_seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {n_seeds}")
    out = Path(out)
    check_benchmark_folder(out)
    model = CellPLM.from_pretrained(checkpoint)  # a bad checkpoint fails before anything is written
    check_gene_ids(model, checkpoint, pairs)
    source = model.source
    out.mkdir(parents=True, exist_ok=True)
    (out / ARTIFACTS_DIR).mkdir(exist_ok=True)
    settings = {
        "profile": profile.name,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": source.get("sha256"),
        "tasks": sorted({t for t, _ in pairs}),
        "datasets": sorted({d for _, d in pairs}),
        "seeds": n_seeds,
        "profile_settings": profile.to_dict(),
    }
    results = _load_or_start(out, settings)
    results["settings"]["tasks"] = sorted(set(results["settings"]["tasks"]) | set(settings["tasks"]))
    results["settings"]["datasets"] = sorted(set(results["settings"]["datasets"]) | set(settings["datasets"]))
    results["settings"]["seeds"] = max(results["settings"]["seeds"], n_seeds)
    results["checkpoint"] = {"name": source.get("name"), "sha256": source.get("sha256")}
    for task, _ in pairs:
        results["tasks"][task] = TASKS[task].describe()
    done = {
        (r["task"], r["dataset"], r["seed"])
        for r in results["records"]
        if r["status"] != "failed"  # failed units run again
    }
    results["records"] = [r for r in results["records"] if (r["task"], r["dataset"], r["seed"]) in done]
    started, before = time.perf_counter(), results.get("wall_s") or 0.0  # a continued run adds to its wall time
    ctx = RunContext(str(checkpoint), profile, out / ARTIFACTS_DIR, want_artifacts=artifacts)
    units = [(t, d, s) for t, d in pairs for s in range(n_seeds)]
    todo = [u for u in units if u not in done]
    logger.info("%d units (task, data set, seed), %d already done", len(units), len(units) - len(todo))
    loaded: dict[tuple[str, str], Any] = {}
    hide = None if progress is None else not progress  # None: tqdm shows the bar on a terminal only
    with tqdm(total=len(units), initial=len(units) - len(todo), desc="benchmark", unit="run", disable=hide) as bar:
        for task, dataset, seed in todo:
            bar.set_postfix_str(f"{task} / {dataset} / seed {seed}")
            case = TASKS[task].datasets[dataset]
            unit = _run_unit(ctx, task, dataset, seed, case, loaded)
            for record in unit.records:
                record |= {
                    "task": task,
                    "dataset": dataset,
                    "seed": seed,
                    "simulated": case.simulated,
                    "checkpoint": results["checkpoint"] if record.get("family") == "cellplm" else None,
                    "versions": results["environment"],
                }
                record.setdefault("protocol", {})
                record.setdefault("wall_s", None)
                record.setdefault("peak_mb", None)
            results["records"] += [_ordered(r) for r in unit.records]
            for kind, entries in unit.artifacts.items():
                kept = [e for e in results["artifacts"].get(kind, []) if (e["task"], e["dataset"]) != (task, dataset)]
                results["artifacts"][kind] = kept + [e | {"path": f"{ARTIFACTS_DIR}/{e['path']}"} for e in entries]
            results["wall_s"] = round(before + time.perf_counter() - started, 1)
            _save(out, results)
            bar.update(1)
    results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["wall_s"] = round(before + time.perf_counter() - started, 1)
    _save(out, results)
    return results


def unit_outcomes(results: dict[str, Any]) -> dict[str, int]:
    """How the units (task, data set, seed) of ``results`` went: ``units``, ``failed`` (a unit that raised or
    whose data set failed to load) and ``cellplm_failed`` (no CellPLM method gave a result, failed units
    included)."""
    units: dict[tuple, list[dict[str, Any]]] = {}
    for record in results.get("records", []):
        units.setdefault((record.get("task"), record.get("dataset"), record.get("seed")), []).append(record)
    failed = sum(any(r.get("status") == "failed" for r in rs) for rs in units.values())
    cellplm_ok = sum(any(r.get("status") == "ok" and r.get("family") == "cellplm" for r in rs) for rs in units.values())
    return {"units": len(units), "failed": failed, "cellplm_failed": len(units) - cellplm_ok}


def _run_unit(ctx: RunContext, task: str, dataset: str, seed: int, case, loaded: dict) -> UnitResult:
    spec = TASKS[task]
    key = (task, dataset)
    try:
        if key not in loaded:
            loaded[key] = case.load(ctx.profile)
    except Exception as err:  # noqa: BLE001 - a data set that fails to load is reported, the rest goes on
        logger.warning("%s / %s: the data set failed to load: %s", task, dataset, err)
        loaded[key] = err
    if isinstance(loaded[key], Exception):
        err = loaded[key]
        return UnitResult([_failed(f"data set failed to load: {type(err).__name__}: {err}")])
    tic = time.perf_counter()
    try:
        unit = spec.run(ctx, dataset, loaded[key], seed)
    except Exception as err:  # noqa: BLE001 - one failing run must not lose the others
        logger.exception("%s / %s / seed %d failed", task, dataset, seed)
        return UnitResult([_failed(f"{type(err).__name__}: {err}")])
    logger.info(
        "%s / %s / seed %d: %d records in %.1f s", task, dataset, seed, len(unit.records), time.perf_counter() - tic
    )
    return unit


def _failed(reason: str) -> dict[str, Any]:
    return {"method": "(all methods)", "family": None, "status": "failed", "reason": reason, "metrics": {}}


_ORDER = (
    "task",
    "dataset",
    "method",
    "seed",
    "init",
    "family",
    "simulated",
    "status",
    "reason",
    "metrics",
    "wall_s",
    "peak_mb",
)


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in _ORDER if k in record} | {k: v for k, v in record.items() if k not in _ORDER}


def check_gene_ids(model: Any, checkpoint: str | Path, pairs: Sequence[tuple[str, str]]) -> None:
    """Refuse a checkpoint whose vocabulary is Ensembl ids for data sets that name genes by symbol: CellPLM would
    match none of their genes and every CellPLM unit would fail."""
    from ..data.genes import _looks_like_ensembl

    if not _looks_like_ensembl(model.genes):
        return
    by_symbol = [(t, d) for t, d in pairs if TASKS[t].datasets[d].genes == SYMBOLS]
    if not by_symbol:
        return
    others = sorted({d for t, spec in TASKS.items() for d, case in spec.datasets.items() if case.genes != SYMBOLS})
    raise ValueError(
        f"--checkpoint {checkpoint} names genes by Ensembl id (e.g. {list(model.genes[:2])}), but the data sets of "
        f"{', '.join(f'{t} / {d}' for t, d in by_symbol)} name them by symbol, so CellPLM would match none of their "
        "genes and every CellPLM run would fail. Benchmark those with a checkpoint whose vocabulary is gene symbols "
        f"(e.g. cellplm-small); with this one, only the data sets whose genes follow the checkpoint can run "
        f"(--datasets {' '.join(others)})"
    )


def check_benchmark_folder(out: Path) -> None:
    """Refuse ``out`` unless it is absent, an empty folder, or a folder an earlier run wrote (its results.json
    declares :data:`FORMAT`): a run writes results.json, report.md and figures/ there, replacing files of those
    names."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder; choose a folder for the benchmark")
    if not out.is_dir() or not any(out.iterdir()):
        return
    marker = out / RESULTS_FILE
    problems = marker_problems(marker, FORMAT)
    if problems and marker.is_file() and _legacy_results(marker):
        return  # written before results.json declared its format
    if problems:
        raise FileExistsError(
            f"--out {out} is a folder that an earlier benchmark did not write ({problems[0]}), and the run would "
            f"replace files in it (results.json, report.md, figures/); choose an empty or new folder"
        )


def _legacy_results(path: Path) -> bool:
    """Whether ``path`` is a results.json of this benchmark written before it declared its format."""
    results = json_object(path) or {}
    keys = {"schema_version", "settings", "environment", "records", "artifacts"}
    return results.get("schema_version") == SCHEMA_VERSION and keys <= set(results)


def _load_or_start(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    path = out / RESULTS_FILE
    if path.exists():
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not a results file of this benchmark ({err}); choose another --out") from err
        if results.get("schema_version") != SCHEMA_VERSION or "records" not in results:
            raise ValueError(f"{path} is not a results file of this benchmark (schema); choose another --out")
        previous = results.get("settings", {})
        now = json.loads(json.dumps(settings, default=_json_default))  # tuples as JSON reads them back: lists
        differ = [k for k in RESUME_KEYS if previous.get(k) != now[k]]
        if "profile" in differ and "profile_settings" in differ:  # another profile: no need to list its sizes
            differ.remove("profile_settings")
        clash = [_difference(k, previous.get(k), now[k]) for k in differ]
        if clash:
            raise ValueError(
                f"{path} holds results of other settings ({'; '.join(clash)}): continue them with the same settings, "
                "or choose another --out"
            )
        logger.info("continuing %s: %d records", path, len(results["records"]))
        results = {"format": FORMAT} | results
        results["environment"] = environment()
        results["finished"] = None
        return results
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "profile": settings["profile"],
        "settings": settings,
        "environment": environment(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "finished": None,
        "wall_s": None,
        "checkpoint": {},
        "tasks": {},
        "records": [],
        "artifacts": {},
    }


def _difference(key: str, old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        return "; ".join(f"{key}.{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys)
    return f"{key}: {old!r} there, {new!r} now"


def _save(out: Path, results: dict[str, Any]) -> None:
    """Write results.json whole or not at all (a hidden file in the same folder, then renamed)."""
    from ..data.output import write_new_file

    text = json.dumps(results, indent=1, default=_json_default)
    # after every unit; the run folder is the benchmark's own (recognise=None: no mark looked for in the file)
    write_new_file(out / RESULTS_FILE, lambda path: path.write_text(text), overwrite=True, log=False, recognise=None)


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
