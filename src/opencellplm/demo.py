"""``opencellplm demo``: the shipped model on data that ships with the install, end to end, in a few minutes.

:func:`run_demo` takes PBMC 68k reduced (700 cells, 10 bulk-sorted cell types; the installed scanpy's copy,
no download) and the shipped ``cellplm-small``, then

1. embeds the cells with the pretrained model and with the same architecture untrained (random weights), to
   show what pretraining adds;
2. scores Leiden clustering of each embedding beside PCA (:func:`opencellplm.tasks.score_clustering`);
3. fine-tunes a cell type annotator on a stratified 80% of the cells (inductive: the other 20% are never seen
   in training) and scores it beside the logistic-regression and kNN baselines on the same split
   (:class:`opencellplm.tasks.CellTypeAnnotator`);
4. draws a UMAP of each representation, coloured by cell type;
5. writes ``report.md`` (what was run, the tables, the pictures, where CellPLM wins and loses, computed from
   the numbers) and ``results.json`` (everything) into one folder.

The folder is written whole (:func:`opencellplm._files.write_directory`); ``overwrite`` replaces only a folder
that an earlier demo wrote and that holds nothing else.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from ._files import check_output_directory, marker_problems, write_directory
from ._threads import thread_settings
from .data.validate import require_anndata
from .model import CellPLM
from .module import CellPLMModule

logger = logging.getLogger(__name__)

FORMAT = "opencellplm-demo"
FORMAT_VERSION = 1
REPORT_FILE, RESULTS_FILE = "report.md", "results.json"
#: One picture per representation, by its key in :data:`REPRESENTATIONS`.
PICTURES = {
    "pretrained": "umap_cellplm_pretrained.png",
    "untrained": "umap_cellplm_untrained.png",
    "pca": "umap_pca.png",
}
DEMO_FILES = (REPORT_FILE, RESULTS_FILE, *PICTURES.values())
STEPS = ("data", "embed", "cluster", "annotate", "pictures", "report")
#: Fine-tuning steps of the annotator: about 10-20 s of the small model on a 2-core CPU with the machine to itself.
DEFAULT_ANNOTATION_STEPS = 150
TEST_FRACTION = 0.2
N_NEIGHBORS = 15
FIXED_RESOLUTION = 1.0
#: Differences smaller than this (after rounding to 3 decimals) are ties.
TIE = 0.0005
#: Figures compared in the verdict: clustering (ClusteringScores attributes) and annotation (ClassificationScores).
CLUSTERING_FIGURES = {
    "best_ari": "best ARI",
    "best_nmi": "best NMI",
    "ari_fixed": f"ARI at resolution {FIXED_RESOLUTION:.1f}",
    "nmi_fixed": f"NMI at resolution {FIXED_RESOLUTION:.1f}",
    "ari_at_nmi_choice": "ARI at the NMI-chosen resolution",
}
ANNOTATION_FIGURES = {"macro_f1": "macro F1", "accuracy": "accuracy"}
VERSIONS = ("opencellplm", "torch", "numpy", "scipy", "pandas", "anndata", "scanpy", "scikit-learn", "leidenalg")
VERSIONS += ("umap-learn", "matplotlib")


def demo_problems(folder: Path) -> list[str]:
    """Why ``folder`` is not a demo folder written by this package holding nothing else (empty if it is)."""
    extra = [f"it holds {p.name}" for p in sorted(folder.iterdir()) if p.name not in DEMO_FILES]
    return marker_problems(folder / RESULTS_FILE, FORMAT) + extra


@dataclass
class _Run:
    """What the steps produce, gathered for the pictures and the report."""

    model: CellPLM
    model_name: str
    data: dict[str, Any]
    labels_key: str
    seed: int
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    names: dict[str, str] = field(default_factory=dict)
    representations: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    clustering: Any = None
    annotation: Any = None
    matched: dict[str, int] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    umap: dict[str, np.ndarray] = field(default_factory=dict)


def run_demo(
    out: str | Path,
    *,
    model: str | Path | CellPLM = "cellplm-small",
    adata: AnnData | None = None,
    labels_key: str = "cell_type",
    seed: int = 0,
    overwrite: bool = False,
    annotation_steps: int = DEFAULT_ANNOTATION_STEPS,
) -> Path:
    """Run the demo and write its folder; returns the path of ``report.md``.

    Parameters
    ----------
    out
        Folder to write (``report.md``, ``results.json``, one UMAP picture per representation). It must be
        absent or empty, or (with ``overwrite``) a folder an earlier demo wrote that holds nothing else; it is
        checked before any work.
    model
        A shipped model's name, a checkpoint directory or a loaded :class:`~opencellplm.CellPLM`.
    adata
        Cells with raw counts and labels in ``obs[labels_key]`` (never modified). Default: PBMC 68k reduced
        (:func:`opencellplm.datasets.pbmc68k_reduced`, the installed scanpy's copy).
    labels_key
        ``obs`` column of the cell type labels.
    seed
        Seeds everything: the untrained weights, the Leiden runs (``seed``, ``seed + 1``, ``seed + 2``), the
        train/test split, the fine-tuning, the baselines and the UMAPs.
    overwrite
        Replace ``out`` if it is a previous demo folder.
    annotation_steps
        Fine-tuning steps of the annotator (at most; the best validation state is kept).

    Returns
    -------
    Path
        ``out / "report.md"``.
    """
    if annotation_steps < 1:
        raise ValueError(f"annotation_steps={annotation_steps}; give at least 1")
    target = check_output_directory(out, overwrite=overwrite, recognise=demo_problems, kind="demo folder")
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def step(name: str, work: Callable[[], Any]) -> Any:
        bar.set_postfix_str(name)
        begun = time.perf_counter()
        result = work()
        seconds[name] = round(time.perf_counter() - begun, 2)
        logger.info("demo: %s done in %.1f s", name, seconds[name])
        bar.update()
        return result

    # Seeding inside fork_rng leaves the caller's torch generator as it was.
    with tqdm(total=len(STEPS), desc="opencellplm demo", unit="step", disable=None) as bar, torch.random.fork_rng([]):
        adata, data = step("data", lambda: _data(adata, labels_key))

        def embed() -> _Run:
            run = _Run(_load(model), "", data, labels_key, seed)
            name = str(run.model.source.get("name", "in memory"))
            run.model_name = "the given model" if name == "in memory" else name
            values = adata.obs[labels_key]
            run.labels = np.where(values.notna(), values.astype(str), None).astype(object)
            _embed(run, adata)
            return run

        run = step("embed", embed)
        step("cluster", lambda: _cluster(run, adata))
        step("annotate", lambda: _annotate(run, adata, annotation_steps))
        step("pictures", lambda: _umaps(run))

        def report() -> None:
            def fill(folder: Path) -> None:
                for key, name in PICTURES.items():
                    _draw(run, key, folder / name)
                timings = seconds | {"total_before_report": round(time.perf_counter() - started, 2)}
                results = _results(run, timings)
                (folder / REPORT_FILE).write_text(_report(run, results))
                (folder / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=_json_default) + "\n")

            write_directory(target, fill, overwrite=overwrite, recognise=demo_problems, kind="demo folder")

        step("report", report)
    logger.info("demo written to %s in %.1f s", target, time.perf_counter() - started)
    return target / REPORT_FILE


# ------------------------------------------------------------------------------------------------ steps
def _data(adata: AnnData | None, labels_key: str) -> tuple[AnnData, dict[str, Any]]:
    """The cells to use (a copy: the caller's object is never modified) and their provenance."""
    if adata is None:
        from .datasets import pbmc68k_reduced

        adata = pbmc68k_reduced()
        source = "opencellplm.datasets.pbmc68k_reduced()"
    else:
        require_anndata(adata)
        adata = adata.to_memory() if adata.isbacked else adata.copy()
        source = "the AnnData given to run_demo"
    if labels_key not in adata.obs:
        raise KeyError(f"obs column {labels_key!r} not found; adata.obs has {list(adata.obs.columns)}")
    labels = adata.obs[labels_key]
    counts = labels.dropna().astype(str).value_counts()
    if len(counts) < 2:
        raise ValueError(f"obs[{labels_key!r}] holds {len(counts)} cell type(s); the demo needs at least two")
    provenance = dict(adata.uns.get("dataset", {}))
    data = {
        "source": source,
        "name": provenance.get("name", "the given cells"),
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "labels_key": labels_key,
        "n_labelled": int(counts.sum()),
        "label_counts": {str(k): int(v) for k, v in counts.items()},
        "provenance": provenance,
    }
    logger.info("demo data: %s, %d cells x %d genes, %d cell types", data["name"], *adata.shape, len(counts))
    return adata, data


def _load(model: str | Path | CellPLM) -> CellPLM:
    return model if isinstance(model, CellPLM) else CellPLM.from_pretrained(model)


def _embed(run: _Run, adata: AnnData) -> None:
    model = run.model
    begun = time.perf_counter()
    model.embed(adata)
    run.names["pretrained"] = f"{run.model_name} (pretrained)"
    run.representations["pretrained"] = adata.obsm["X_cellplm"]
    run.seconds["pretrained"] = round(time.perf_counter() - begun, 2)
    begun = time.perf_counter()
    torch.manual_seed(run.seed)  # inside run_demo's fork_rng: the caller's generator is left as it was
    module = CellPLMModule(model.config)
    untrained = CellPLM(module, model.genes, meta={"gene_id_rule": model.gene_id_rule}, device=model.device)
    run.names["untrained"] = f"{run.model_name} architecture, untrained (random weights, seed {run.seed})"
    run.representations["untrained"] = untrained.get_latent_representation(adata)
    run.seconds["untrained"] = round(time.perf_counter() - begun, 2)
    record = adata.uns["cellplm"]["X_cellplm"]
    run.matched = {k: int(record[k]) for k in ("n_genes_matched", "n_cells_left_out")}


def _cluster(run: _Run, adata: AnnData) -> None:
    from . import baselines
    from .tasks import score_clustering

    pca = baselines.pca_embedding(adata, seed=run.seed)
    p = pca.params
    run.names["pca"] = (
        f"PCA (log-normalised counts, {p['n_top_genes']} highly variable genes, scaled, {p['n_comps']} PCs)"
    )
    run.representations["pca"] = pca.prediction
    run.seconds["pca"] = round(pca.seconds, 2)
    # PCA comes in as an embedding, computed once by the function score_clustering's "pca" baseline calls, so
    # that the picture shows the very representation that was scored.
    result = score_clustering(
        adata,
        run.labels_key,
        embeddings={run.names[key]: run.representations[key] for key in PICTURES},
        embedding_key=None,
        baselines_run=(),
        seeds=tuple(run.seed + i for i in range(3)),
        fixed_resolution=FIXED_RESOLUTION,
        n_neighbors=N_NEIGHBORS,
    )
    result.seconds = {run.names[key]: run.seconds[key] for key in PICTURES}
    run.clustering = result


def _split(labels: Any, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """A seeded stratified split of the labelled cells: the test mask and its description. Cells of a type with
    a single cell stay in training (a stratified split cannot place them)."""
    from sklearn.model_selection import train_test_split

    names = labels.astype(object).where(labels.notna(), None).to_numpy()
    labelled = np.flatnonzero(labels.notna().to_numpy())
    counts = labels.dropna().astype(str).value_counts()
    single = set(counts.index[counts < 2])
    splittable = np.array([i for i in labelled if str(names[i]) not in single], dtype=int)
    _, test_rows = train_test_split(
        splittable,
        test_size=TEST_FRACTION,
        stratify=np.asarray([str(names[i]) for i in splittable]),
        random_state=seed,
    )
    test = np.zeros(len(labels), dtype=bool)
    test[test_rows] = True
    description = {
        "method": f"sklearn.model_selection.train_test_split(test_size={TEST_FRACTION}, stratify=labels, "
        f"random_state={seed})",
        "n_train": int(len(labelled) - test.sum()),
        "n_test": int(test.sum()),
        "kept_in_training_single_cell_types": sorted(single),
        "n_unlabelled_left_out": int(len(labels) - len(labelled)),
    }
    return test, description


def _annotate(run: _Run, adata: AnnData, steps: int) -> None:
    from .tasks import AnnotationRecipe, CellTypeAnnotator

    labels = adata.obs[run.labels_key]
    test, run.split = _split(labels, run.seed)
    train = labels.notna().to_numpy() & ~test
    recipe = AnnotationRecipe(
        steps=steps, eval_every=max(1, min(10, steps // 5)), warmup_steps=min(15, steps // 10), seed=run.seed
    )
    annotator = CellTypeAnnotator.from_pretrained(run.model, recipe=recipe)
    annotator.fit(adata, run.labels_key, mode="inductive", train_cells=train)
    run.annotation = annotator.score(adata, run.labels_key, test_cells=test, seed=run.seed)
    summary = asdict(annotator.summary)
    summary.pop("history", None)
    run.fit = {"annotator": summary, "history": annotator.summary.history, "recipe": asdict(recipe)}


def _umaps(run: _Run) -> None:
    """2-D UMAP coordinates of each representation (scanpy, on a throwaway AnnData; NaN rows left out)."""
    import scanpy as sc

    for key in PICTURES:
        values = np.asarray(run.representations[key], dtype=np.float32)
        kept = np.isfinite(values).all(1)
        work = AnnData(obs={"row": np.flatnonzero(kept).astype(str)})
        work.obsm["rep"] = values[kept]
        sc.pp.neighbors(work, use_rep="rep", n_neighbors=min(N_NEIGHBORS, int(kept.sum()) - 1), random_state=run.seed)
        sc.tl.umap(work, random_state=run.seed)
        coordinates = np.full((len(values), 2), np.nan, dtype=np.float32)
        coordinates[kept] = work.obsm["X_umap"]
        run.umap[key] = coordinates


# --------------------------------------------------------------------------------------------- pictures
def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["gist_ncar"](i / n) for i in range(n)]


def _draw(run: _Run, key: str, path: Path) -> None:
    """A scatter of the UMAP coloured by cell type, the scores in the title and the legend outside the axes."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state is touched

    coordinates = run.umap[key]
    labels = run.labels
    categories = list(run.data["label_counts"])
    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    ax = fig.subplots()
    for category, colour in zip(sorted(categories), _colours(len(categories))):
        rows = (labels == category) & np.isfinite(coordinates).all(1)
        ax.scatter(*coordinates[rows].T, s=6, color=colour, label=f"{category} ({int(rows.sum())})", linewidths=0)
    missing = np.array([v is None for v in labels]) & np.isfinite(coordinates).all(1)
    if missing.any():
        ax.scatter(
            *coordinates[missing].T, s=6, color="lightgrey", label=f"no label ({int(missing.sum())})", linewidths=0
        )
    scores = run.clustering.scores[run.names[key]]
    ari = np.mean([s.ari_fixed for s in scores])
    nmi = np.mean([s.nmi_fixed for s in scores])
    ax.set_title(
        f"{run.names[key]}\nLeiden at resolution {FIXED_RESOLUTION:.1f}: ARI {ari:.3f}, NMI {nmi:.3f} "
        f"(mean of {len(scores)} seeds)",
        fontsize=10,
    )
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(
        title=run.labels_key, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, markerscale=2.5, fontsize=8
    )
    fig.savefig(path, dpi=150)


# ------------------------------------------------------------------------------------------------ report
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _compare(ours: str, theirs: str, values: dict[str, tuple[float, float]]) -> dict[str, list[dict[str, Any]]]:
    """Each figure of ``values`` (label -> (ours, theirs)) sorted into wins, losses and ties of ``ours``."""
    out: dict[str, list[dict[str, Any]]] = {"wins": [], "losses": [], "ties": []}
    for label, (a, b) in values.items():
        difference = round(float(a) - float(b), 3)
        kind = "ties" if abs(difference) < TIE else "wins" if difference > 0 else "losses"
        out[kind].append({"figure": label, "ours": float(a), "theirs": float(b), "difference": difference})
    return {"ours": ours, "theirs": theirs} | out


def _verdict(run: _Run) -> list[dict[str, Any]]:
    """CellPLM (pretrained) against every other row of both tables, figure by figure."""
    scores = run.clustering.scores

    def mean(name: str, attribute: str) -> float:
        return float(np.mean([getattr(s, attribute) for s in scores[name]]))

    ours = run.names["pretrained"]
    short = {"untrained": f"the untrained {run.model_name} architecture", "pca": "PCA"}
    comparisons = []
    for key in ("untrained", "pca"):
        theirs = run.names[key]
        values = {label: (mean(ours, a), mean(theirs, a)) for a, label in CLUSTERING_FIGURES.items()}
        comparisons.append(
            _compare(ours, theirs, values) | {"task": "clustering", "model": run.model_name, "other": short[key]}
        )
    methods = run.annotation.methods
    mine = "cellplm" if "cellplm" in methods else next(iter(methods))
    for name, method in methods.items():
        if name == mine:
            continue
        values = {
            label: (getattr(methods[mine]["scores"], a), getattr(method["scores"], a))
            for a, label in ANNOTATION_FIGURES.items()
        }
        comparisons.append(
            _compare(mine, name, values)
            | {"task": "annotation", "model": f"{run.model_name}, fine-tuned,", "other": f"`{name}`"}
        )
    return comparisons


def _by(items: list[dict[str, Any]]) -> str:
    return ", ".join(f"{i['figure']} by {abs(i['difference']):.3f}" for i in items)


def verdict_lines(results: dict[str, Any]) -> dict[str, list[str]]:
    """Plain sentences from a demo's ``results.json``: where CellPLM wins, loses and ties (``"wins"``,
    ``"losses"``, ``"ties"``), e.g. "PCA beats cellplm-small (clustering) on best ARI by 0.263"."""
    out: dict[str, list[str]] = {"wins": [], "losses": [], "ties": []}
    for c in results["verdict"]:
        model, other, task = c["model"], c["other"], c["task"]
        if c["wins"]:
            out["wins"].append(f"{model} beats {other} ({task}) on {_by(c['wins'])}.")
        if c["losses"]:
            out["losses"].append(
                f"{other[0].upper() + other[1:]} beats {model.rstrip(',')} ({task}) on {_by(c['losses'])}."
            )
        if c["ties"]:
            figures = ", ".join(i["figure"] for i in c["ties"])
            out["ties"].append(f"{model.rstrip(',')} and {other} tie ({task}) on {figures}.")
    return out


def _results(run: _Run, timings: dict[str, float]) -> dict[str, Any]:
    from . import __version__

    source = dict(run.model.source)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "opencellplm_version": __version__,
        "model": {
            "name": run.model_name,
            "source": source,
            "weights_sha256": source.get("sha256"),
            "n_parameters": run.model.module.n_parameters(),
            "n_genes_vocabulary": len(run.model.genes),
        }
        | run.matched,
        "data": run.data,
        "seed": run.seed,
        "seeds": {
            "untrained_weights": f"torch.manual_seed({run.seed})",
            "leiden": list(run.clustering.settings["seeds"]),
            "split": run.seed,
            "fine_tuning": run.seed,
            "baselines": run.seed,
            "umap": run.seed,
        },
        "representations": {key: run.names[key] for key in PICTURES},
        "embedding_seconds": {run.names[key]: run.seconds[key] for key in PICTURES},
        "clustering": run.clustering.to_dict(),
        "annotation": run.annotation.to_dict(),
        "annotation_split": run.split,
        "annotation_fit": run.fit,
        "pictures": {run.names[key]: name for key, name in PICTURES.items()},
        "verdict": _verdict(run),
        "timings_seconds": timings,
        "versions": _versions(),
        "platform": {
            "machine": platform.machine(),
            "system": platform.system(),
            **thread_settings(),
        },
    }


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: Any, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _report(run: _Run, results: dict[str, Any]) -> str:
    model, data, split = results["model"], results["data"], run.split
    provenance = data["provenance"]
    if provenance.get("origin"):
        shas = provenance.get("member_sha256") or {provenance.get("archive"): provenance.get("archive_sha256")}
        origin = f"{provenance['origin']}; " + "; ".join(f"`{k}` sha256 `{v}`" for k, v in shas.items())
    else:
        origin = data["source"]
    annotation, fit = run.annotation, run.fit["annotator"]
    frame = annotation.to_frame()
    annotation_rows = [
        [
            f"`{name}`",
            _number(row["macro_f1"]),
            _number(row["macro_precision"]),
            _number(row["accuracy"]),
            _number(row["fit_seconds"], 1),
            _number(row["predict_seconds"], 2),
        ]
        for name, row in frame.iterrows()
    ]
    verdict = verdict_lines(results)
    wins, losses, ties = verdict["wins"], verdict["losses"], verdict["ties"]
    timings = results["timings_seconds"]
    recipe = run.fit["recipe"]
    seeds = results["seeds"]
    lines = [
        f"# opencellplm demo: {model['name']} on {data['name']}",
        "",
        f"Written {results['created']} by opencellplm {results['opencellplm_version']} "
        f"(`opencellplm demo`, seed {run.seed}).",
        "",
        "## Where CellPLM wins and where it loses",
        "",
        "Computed from the tables below (clustering: mean over Leiden seeds; annotation: the held-out test cells).",
        "",
        "**Wins**" + ("" if wins else ": none."),
        "",
        *[f"- {line}" for line in wins],
        *([""] if wins else []),
        "**Losses**" + ("" if losses else ": none."),
        "",
        *[f"- {line}" for line in losses],
        *([""] if losses else []),
        *([f"**Ties** (within {TIE})", "", *[f"- {line}" for line in ties], ""] if ties else []),
        "## What was run",
        "",
        f"- **Model**: `{model['name']}`, {model['n_parameters']:,} parameters, {model['n_genes_vocabulary']:,} genes "
        f"in its vocabulary ({model['n_genes_matched']} of the data's {data['n_genes']} matched); weights "
        f"`{model['source'].get('path', 'in memory')}`, sha256 `{model['weights_sha256'] or 'n/a (in memory)'}`.",
        f"- **Data**: `{data['name']}`, {data['n_cells']} cells x {data['n_genes']} genes, raw counts, labels "
        f"`obs['{run.labels_key}']` ({len(data['label_counts'])} cell types, {data['n_labelled']} labelled cells). "
        f"Source: {origin}.",
        f"- **Representations**: {run.names['pretrained']}; the same architecture with random weights "
        f"(`CellPLM(CellPLMModule(model.config), model.genes)` after `{seeds['untrained_weights']}`), to show what "
        f"pretraining adds; {run.names['pca']} (`opencellplm.baselines.pca_embedding`, seed {run.seed}).",
        f"- **Clustering** (`opencellplm.tasks.score_clustering`): {N_NEIGHBORS}-nearest-neighbour graph, Leiden at "
        f"resolutions {', '.join(f'{r:g}' for r in run.clustering.scores[run.names['pca']][0].resolutions)}, seeds "
        f"{seeds['leiden']}; ARI and NMI against the labels.",
        f"- **Annotation** (`opencellplm.tasks.CellTypeAnnotator`, {annotation.mode}): stratified split "
        f"`{split['method']}`: {split['n_train']} training cells (of which {fit['n_validation']} held out for "
        f"validation), **{annotation.n_test} test cells**, never seen in fine-tuning. Fine-tuned from {model['name']} "
        f"for at most {recipe['steps']} steps ({fit['steps']} run; best validation macro F1 "
        f"{_number(fit['best_val_f1'])} kept), lr {recipe['lr']:g}, evaluation every {recipe['eval_every']} steps. "
        "The baselines (`celltypist_style`, `l1_logistic_cv`, `knn_on_pca`) learn from the same training cells "
        "and predict the same test cells.",
        "- **Versions**: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        "- **Wall time** (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if k != "total_before_report")
        + f"; {timings['total_before_report']:.1f} in all before this report was written.",
        "",
        "## Zero-shot clustering",
        "",
        f'Mean ± sd over Leiden seeds {seeds["leiden"]}. "Best" is the best over the resolution sweep (the '
        "official protocol, optimistic); the fixed resolution and the NMI-chosen one are label-free choices.",
        "",
        run.clustering.to_markdown(),
        "",
        "## Cell type annotation",
        "",
        f"Mode: **{annotation.mode}**; scored on **{annotation.n_test} test cells**"
        + (f"; test labels never seen in training: {annotation.unseen_labels}" if annotation.unseen_labels else "")
        + ". Fit seconds include fine-tuning (CellPLM) or the whole baseline.",
        "",
        _markdown_table(
            [f"method ({annotation.mode})", "macro F1", "macro precision", "accuracy", "fit s", "predict s"],
            annotation_rows,
        ),
        "",
        "## UMAPs",
        "",
        "Each representation's 15-NN graph, UMAP (scanpy, seeded), coloured by cell type; the title gives the "
        f"Leiden scores at resolution {FIXED_RESOLUTION:.1f}.",
        "",
    ]
    for key, name in PICTURES.items():
        lines += [f"### {run.names[key]}", "", f"![{run.names[key]}]({name})", ""]
    lines += [
        f"Everything above, with per-resolution scores and confusion matrices, is in [{RESULTS_FILE}]({RESULTS_FILE}).",
        "",
    ]
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
