"""``opencellplm demo``: the shipped model on data that ships with the install, end to end, in a few minutes.

:func:`run_demo` takes PBMC 68k reduced (700 cells, 10 cell types assigned by correlation with bulk-sorted
reference profiles; the installed scanpy's copy, no download) and the shipped ``cellplm-small``, then

1. embeds the cells with the pretrained model and with the same architecture untrained (random weights, five
   initialisations), to show what pretraining adds: a comparison with the spread of random networks, not one draw;
2. scores Leiden clustering of each embedding beside PCA (:func:`opencellplm.tasks.score_clustering`);
3. denoises zero-shot by the paper's hidden-entry protocol, on three seeded corruptions (10% of each cell's
   non-zero counts hidden): the pretrained model, the five untrained initialisations, kNN smoothing and the
   data set's mean profile, each on the same corrupted matrix (:meth:`opencellplm.tasks.Denoiser.score`);
4. on each of three seeded stratified 80/20 splits, fine-tunes a cell type annotator on the 80% (inductive:
   the other 20% are never seen in training) and scores it beside the logistic-regression and kNN baselines on
   the same split (:class:`opencellplm.tasks.CellTypeAnnotator`);
5. draws a UMAP of each representation, coloured by cell type;
6. writes ``report.md`` (what was run, the tables, the pictures, where CellPLM wins and loses, computed from
   the numbers: a difference is a win or a loss only beyond the spread the seeds show) and ``results.json``
   (everything) into one folder.

The folder is written whole (:func:`opencellplm._files.write_directory`); ``overwrite`` replaces only a folder
that an earlier demo wrote and that holds nothing else.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from ._files import check_output_directory, marker_problems, write_directory
from ._palette import category_colours
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
STEPS = ("data", "embed", "cluster", "denoise", "annotate", "pictures", "report")
#: Fine-tuning steps of the annotator: about 10-20 s of the small model on a 2-core CPU with the machine to itself.
DEFAULT_ANNOTATION_STEPS = 150
TEST_FRACTION = 0.2
N_NEIGHBORS = 15
FIXED_RESOLUTION = 1.0
#: Seeded annotation splits, seeded denoising corruptions, and random initialisations of the untrained
#: architecture: a verdict is a win or a loss only when the difference exceeds the combined sd over them (one
#: split, one corruption, one initialisation cannot say).
N_SPLITS = 3
N_CORRUPTIONS = 3
N_UNTRAINED = 5
#: Zero-shot denoising (the paper's hidden protocol): the share of each cell's non-zero counts hidden, and the
#: baselines scored on the same corrupted matrix (kNN smoothing, and the mean profile: what a decoder that
#: ignores the cell predicts).
DENOISING_FRACTION = 0.1
DENOISING_BASELINES = ("knn_smoothing", "mean_profile")
#: Differences smaller than this (after rounding to 3 decimals) are ties whatever the spread.
TIE = 0.0005
#: What the default data's labels are: the ground truth every verdict is scored against.
PBMC68K_GROUND_TRUTH = (
    "`obs['cell_type']` of PBMC 68k reduced (scanpy's `bulk_labels`): each cell's type was assigned by "
    "correlating its expression with bulk-sorted reference populations (Zheng et al. 2017), not measured by "
    "sorting the cell itself, so the labels are a computational annotation with errors of their own"
)
#: Figures compared in the verdict: clustering (ClusteringScores attributes) and annotation (ClassificationScores).
CLUSTERING_FIGURES = {
    "best_ari": "best ARI",
    "best_nmi": "best NMI",
    "ari_fixed": f"ARI at resolution {FIXED_RESOLUTION:.1f}",
    "nmi_fixed": f"NMI at resolution {FIXED_RESOLUTION:.1f}",
    "ari_at_nmi_choice": "ARI at the NMI-chosen resolution",
}
ANNOTATION_FIGURES = {"macro_f1": "macro F1", "accuracy": "accuracy"}
#: Denoising figures (DenoisingScores fields), with the direction that is better.
DENOISING_FIGURES = {"rmse": ("RMSE", "lower"), "mae": ("MAE", "lower"), "pearson": ("Pearson r", "higher")}
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
    annotations: list[Any] = field(default_factory=list)  # one AnnotationScores per split
    denoising: list[dict[str, Any]] = field(default_factory=list)  # per corruption: seed, pretrained, untrained
    matched: dict[str, int] = field(default_factory=dict)
    fits: list[dict[str, Any]] = field(default_factory=list)
    splits: list[dict[str, Any]] = field(default_factory=list)
    umap: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def untrained(self) -> list[str]:
        """The keys of the untrained initialisations (the first is pictured)."""
        return [key for key in self.representations if key.startswith("untrained")]


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
        A shipped model's name, a checkpoint directory or a loaded :class:`~opencellplm.CellPLM`. A model whose
        vocabulary is Ensembl ids (a converted official checkpoint) is refused before any work when the data's
        var_names are gene symbols, as is one that matches none of the data's genes.
    adata
        Cells with raw counts and labels in ``obs[labels_key]`` (never modified). Default: PBMC 68k reduced
        (:func:`opencellplm.datasets.pbmc68k_reduced`, the installed scanpy's copy).
    labels_key
        ``obs`` column of the cell type labels.
    seed
        Seeds everything: the untrained weights (``seed`` .. ``seed + 4``, one per initialisation), the Leiden
        runs (``seed`` .. ``seed + 2``), the denoising corruptions (``seed`` .. ``seed + 2``), the train/test
        splits and their fine-tuning and baselines (``seed`` .. ``seed + 2``, one per split) and the UMAPs.
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
    loaded = _load(model)
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
        _check_genes(loaded, adata, data)  # before any work: a model that matches no gene is refused here

        def embed() -> _Run:
            run = _Run(loaded, "", data, labels_key, seed)
            name = str(run.model.source.get("name", "in memory"))
            run.model_name = "the given model" if name == "in memory" else name
            values = adata.obs[labels_key]
            run.labels = np.where(values.notna(), values.astype(str), None).astype(object)
            _embed(run, adata)
            return run

        run = step("embed", embed)
        step("cluster", lambda: _cluster(run, adata))
        step("denoise", lambda: _denoise(run, adata))
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
    ground_truth = (
        PBMC68K_GROUND_TRUTH if source.startswith("opencellplm.") else f"`obs['{labels_key}']` of the given cells"
    )
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
        "ground_truth": ground_truth,
    }
    logger.info("demo data: %s, %d cells x %d genes, %d cell types", data["name"], *adata.shape, len(counts))
    return adata, data


def _load(model: str | Path | CellPLM) -> CellPLM:
    return model if isinstance(model, CellPLM) else CellPLM.from_pretrained(model)


def _check_genes(model: CellPLM, adata: AnnData, data: dict[str, Any]) -> None:
    """Refuse, before any work, data whose genes the model cannot match (ids against symbols, or none shared)."""
    from .data.genes import _looks_like_ensembl, align_genes

    name = model.source.get("name", "the given model")
    if _looks_like_ensembl(model.genes) and not _looks_like_ensembl(adata.var_names):
        raise ValueError(
            f"{name} names genes by Ensembl id (e.g. {list(model.genes[:2])}), but the var_names of {data['name']} "
            f"are gene symbols (e.g. {list(adata.var_names[:2])}): none would match, and every CellPLM step would "
            "fail. Run the demo with a model whose vocabulary is gene symbols (cellplm-small), or pass "
            "run_demo(adata=...) cells whose var_names are the model's Ensembl ids"
        )
    align_genes(
        list(map(str, adata.var_names)),
        model.genes,
        source=f"the var_names of {data['name']}",
        rule=model.gene_id_rule,
        aliases=model.gene_aliases,
    )


def _embed(run: _Run, adata: AnnData) -> None:
    model = run.model
    begun = time.perf_counter()
    model.embed(adata)
    run.names["pretrained"] = f"{run.model_name} (pretrained)"
    run.representations["pretrained"] = adata.obsm["X_cellplm"]
    run.seconds["pretrained"] = round(time.perf_counter() - begun, 2)
    record = adata.uns["cellplm"]["X_cellplm"]
    run.matched = {k: int(record[k]) for k in ("n_genes_matched", "n_cells_left_out")}
    for i in range(N_UNTRAINED):
        key, seed = "untrained" if i == 0 else f"untrained_{i}", run.seed + i
        begun = time.perf_counter()
        untrained = untrained_copy(model, seed)
        run.names[key] = f"{run.model_name} architecture, untrained (random weights, seed {seed})"
        untrained.embed(adata, key_added=f"X_{key}")
        run.representations[key] = adata.obsm[f"X_{key}"]
        run.seconds[key] = round(time.perf_counter() - begun, 2)
    run.matched["n_genes_matched_untrained"] = int(adata.uns["cellplm"]["X_untrained"]["n_genes_matched"])


def untrained_copy(model: CellPLM, seed: int) -> CellPLM:
    """The architecture of ``model`` with random weights (``torch.manual_seed(seed)``), matching genes by the same
    vocabulary, gene-id rule and gene aliases. The weights are drawn in a forked generator: the caller's is left as
    it was."""
    with torch.random.fork_rng([]):
        torch.manual_seed(seed)
        module = CellPLMModule(model.config)
    meta = {"gene_id_rule": model.gene_id_rule}
    if model.gene_aliases:
        meta["gene_aliases"] = dict(model.gene_aliases)
    return CellPLM(module, model.genes, meta=meta, device=model.device)


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
        embeddings={run.names[key]: run.representations[key] for key in run.representations},
        embedding_key=None,
        baselines_run=(),
        seeds=tuple(run.seed + i for i in range(3)),
        fixed_resolution=FIXED_RESOLUTION,
        n_neighbors=N_NEIGHBORS,
    )
    result.seconds = {run.names[key]: run.seconds[key] for key in run.representations}
    run.clustering = result


def _denoise(run: _Run, adata: AnnData) -> None:
    """Zero-shot denoising, the paper's hidden protocol, on each seeded corruption (seeds ``seed`` ..
    ``seed + N_CORRUPTIONS - 1``): the pretrained model with the baselines, then each untrained initialisation
    (the same weights as the embedding step's), all on the same corrupted matrix (the corruption seed)."""
    from .tasks import Denoiser

    untrained = [untrained_copy(run.model, run.seed + i) for i in range(N_UNTRAINED)]
    for seed in range(run.seed, run.seed + N_CORRUPTIONS):
        common = {"protocol": "hidden", "fraction": DENOISING_FRACTION, "seed": seed, "fine_tune": False}
        pretrained = Denoiser.from_pretrained(run.model).score(adata, baselines=DENOISING_BASELINES, **common)
        random_weights = [Denoiser.from_pretrained(model).score(adata, baselines=(), **common) for model in untrained]
        run.denoising.append({"seed": seed, "pretrained": pretrained, "untrained": random_weights})


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
    """One fine-tuning and scoring per seeded split (seeds ``seed`` .. ``seed + N_SPLITS - 1``)."""
    from .tasks import AnnotationRecipe, CellTypeAnnotator

    labels = adata.obs[run.labels_key]
    for seed in range(run.seed, run.seed + N_SPLITS):
        test, split = _split(labels, seed)
        train = labels.notna().to_numpy() & ~test
        recipe = AnnotationRecipe(
            steps=steps, eval_every=max(1, min(10, steps // 5)), warmup_steps=min(15, steps // 10), seed=seed
        )
        annotator = CellTypeAnnotator.from_pretrained(run.model, recipe=recipe)
        annotator.fit(adata, run.labels_key, mode="inductive", train_cells=train)
        run.annotations.append(annotator.score(adata, run.labels_key, test_cells=test, seed=seed))
        summary = asdict(annotator.summary)
        summary.pop("history", None)
        run.splits.append(split | {"seed": seed})
        run.fits.append({"annotator": summary, "history": annotator.summary.history, "recipe": asdict(recipe)})


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
def _draw(run: _Run, key: str, path: Path) -> None:
    """A scatter of the UMAP coloured by cell type, the scores in the title and the legend outside the axes."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state is touched

    coordinates = run.umap[key]
    labels = run.labels
    categories = list(run.data["label_counts"])
    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    ax = fig.subplots()
    for category, colour in zip(sorted(categories), category_colours(len(categories))):
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


def _spread(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _compare(
    ours: str, theirs: str, values: dict[str, tuple[list[float], list[float]]], *, lower: Collection[str] = ()
) -> dict[str, Any]:
    """Each figure of ``values`` (label -> (our values, their values) over seeds) sorted into wins, losses and ties
    of ``ours``: a win or a loss only when the difference of the means exceeds the combined sd
    (``sqrt(sd_ours**2 + sd_theirs**2)``) and :data:`TIE`, else a tie within sd. Higher is better, except for
    the figures named in ``lower``. Values that are not finite (a Pearson r of a constant prediction) are left out,
    and a figure without a value on either side is not compared."""
    out: dict[str, list[dict[str, Any]]] = {"wins": [], "losses": [], "ties": []}
    for label, (a, b) in values.items():
        a, b = [v for v in a if np.isfinite(v)], [v for v in b if np.isfinite(v)]
        if not a or not b:
            continue
        difference = round(float(np.mean(a)) - float(np.mean(b)), 3)
        sd = round(float(np.hypot(_spread(a), _spread(b))), 3)
        better = "lower" if label in lower else "higher"
        ahead = difference < 0 if better == "lower" else difference > 0
        kind = "ties" if abs(difference) <= max(sd, TIE) else "wins" if ahead else "losses"
        entry = {"figure": label, "ours": float(np.mean(a)), "theirs": float(np.mean(b)), "difference": difference}
        out[kind].append(entry | {"sd": sd, "n_ours": len(a), "n_theirs": len(b), "better": better})
    return {"ours": ours, "theirs": theirs} | out


def _denoising_values(run: _Run) -> dict[str, dict[str, list[float]]]:
    """Per method (``cellplm_zero_shot``, ``cellplm_untrained``, then the baselines) and figure: its values over
    the corruptions (the untrained architecture's over its initialisations on each corruption)."""
    scores: dict[str, list[dict[str, float]]] = {"cellplm_zero_shot": [], "cellplm_untrained": []}
    scores |= {name: [] for name in DENOISING_BASELINES}
    for corruption in run.denoising:
        for method in corruption["pretrained"].methods:
            scores[method.method].append(method.scores)
        scores["cellplm_untrained"] += [result["cellplm_zero_shot"].scores for result in corruption["untrained"]]
    return {
        method: {key: [float(s.get(key, np.nan)) for s in entries] for key in DENOISING_FIGURES}
        for method, entries in scores.items()
        if entries
    }


def _verdict(run: _Run) -> list[dict[str, Any]]:
    """CellPLM (pretrained) against every other row of the three tables, figure by figure, beyond the seeds'
    spread: clustering and zero-shot denoising against the untrained architecture's initialisations too."""
    scores = run.clustering.scores

    def values(keys: list[str], attribute: str) -> list[float]:
        return [float(getattr(s, attribute)) for key in keys for s in scores[run.names[key]]]

    ours = run.names["pretrained"]
    leiden = f"{len(run.clustering.settings['seeds'])} Leiden seeds"
    others = {
        "untrained": (
            run.untrained,
            f"the untrained {run.model_name} architecture",
            f"{leiden}; {len(run.untrained)} random initialisations of the untrained architecture",
        ),
        "pca": (["pca"], "PCA", leiden),
    }
    comparisons = []
    for key, (keys, short, spread) in others.items():
        figures = {label: (values(["pretrained"], a), values(keys, a)) for a, label in CLUSTERING_FIGURES.items()}
        comparisons.append(
            _compare(ours, run.names[key], figures)
            | {"task": "clustering", "model": run.model_name, "other": short, "spread": spread}
        )
    denoising = _denoising_values(run)
    n_corruptions = len(run.denoising)
    corruptions = f"{n_corruptions} corruption seeds"
    others = {
        "cellplm_untrained": (
            f"the untrained {run.model_name} architecture",
            f"{corruptions}; {len(run.untrained)} random initialisations of the untrained architecture",
        ),
    }
    others |= {name: (f"`{name}`", corruptions) for name in DENOISING_BASELINES if name in denoising}
    lower = [label for label, better in DENOISING_FIGURES.values() if better == "lower"]
    for name, (short, spread) in others.items():
        figures = {
            label: (denoising["cellplm_zero_shot"][key], denoising[name][key])
            for key, (label, _) in DENOISING_FIGURES.items()
        }
        comparisons.append(
            _compare("cellplm_zero_shot", name, figures, lower=lower)
            | {"task": "denoising", "model": f"{run.model_name}, zero-shot,", "other": short, "spread": spread}
        )
    methods = [m.method for m in run.annotations[0].methods]
    mine = "cellplm" if "cellplm" in methods else methods[0]
    for name in methods:
        if name == mine:
            continue
        figures = {
            label: (
                [float(a[mine].scores[attr]) for a in run.annotations],
                [float(a[name].scores[attr]) for a in run.annotations],
            )
            for attr, label in ANNOTATION_FIGURES.items()
        }
        comparisons.append(
            _compare(mine, name, figures)
            | {
                "task": "annotation",
                "model": f"{run.model_name}, fine-tuned,",
                "other": f"`{name}`",
                "spread": f"{len(run.annotations)} seeded splits",
            }
        )
    return comparisons


def _by(items: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{i['figure']} by {abs(i['difference']):.3f}" + (f" (sd {i['sd']:.3f})" if "sd" in i else "") for i in items
    )


def verdict_lines(results: dict[str, Any]) -> dict[str, list[str]]:
    """Plain sentences from a demo's ``results.json``: where CellPLM wins, loses and ties within sd (``"wins"``,
    ``"losses"``, ``"ties"``), e.g. "PCA beats cellplm-small (clustering) on best ARI by 0.263 (sd 0.012)": a
    win or a loss is a difference beyond the combined sd of the two sides over seeds."""
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
            figures = ", ".join(
                f"{i['figure']} ({i['difference']:+.3f}" + (f", sd {i['sd']:.3f})" if "sd" in i else ")")
                for i in c["ties"]
            )
            out["ties"].append(f"{model.rstrip(',')} and {other} tie within sd ({task}) on {figures}.")
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
            "untrained_weights": [f"torch.manual_seed({run.seed + i})" for i in range(len(run.untrained))],
            "leiden": list(run.clustering.settings["seeds"]),
            "denoising_corruptions": [corruption["seed"] for corruption in run.denoising],
            "splits": [split["seed"] for split in run.splits],
            "fine_tuning": "the split's seed",
            "baselines": "the split's seed",
            "umap": run.seed,
        },
        "representations": {key: run.names[key] for key in run.representations},
        "embedding_seconds": {run.names[key]: run.seconds[key] for key in run.representations},
        "clustering": run.clustering.to_dict(),
        "denoising": _denoising_results(run),
        "denoising_summary": _denoising_summary(run),
        "annotation": [scores.to_dict() for scores in run.annotations],
        "annotation_summary": _annotation_summary(run),
        "annotation_splits": run.splits,
        "annotation_fits": run.fits,
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


def _denoising_results(run: _Run) -> dict[str, Any]:
    """Per corruption: the pretrained model's and the baselines' result, and each untrained initialisation's
    scores on the same corrupted matrix."""
    first = run.denoising[0]["pretrained"]
    return {
        "protocol": first.protocol,
        "fraction": first.fraction,
        "n_cells": first.n_cells,
        "n_genes": first.n_genes,
        "n_genes_not_in_vocabulary": first.n_genes_not_in_vocabulary,
        "baselines": list(DENOISING_BASELINES),
        "corruptions": [
            {
                "seed": corruption["seed"],
                "pretrained": corruption["pretrained"].to_dict(),
                "untrained": [
                    {"weights_seed": run.seed + i}
                    | asdict(result["cellplm_zero_shot"])
                    | {"method": "cellplm_untrained"}
                    for i, result in enumerate(corruption["untrained"])
                ],
            }
            for corruption in run.denoising
        ],
    }


def _denoising_summary(run: _Run) -> dict[str, dict[str, dict[str, Any]]]:
    """Per method and figure: the values (over corruptions, and initialisations for the untrained architecture),
    their mean and sd (ddof 1); None where no value is finite."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, figures in _denoising_values(run).items():
        out[method] = {}
        for key, values in figures.items():
            finite = [v for v in values if np.isfinite(v)]
            mean = float(np.mean(finite)) if finite else None
            shown = [v if np.isfinite(v) else None for v in values]
            out[method][key] = {"mean": mean, "sd": _spread(finite) if finite else None, "values": shown}
    return out


def _annotation_summary(run: _Run) -> dict[str, dict[str, dict[str, Any]]]:
    """Per method and figure: the values over the splits, their mean and sd (ddof 1)."""
    frames = [scores.to_frame() for scores in run.annotations]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method in frames[0].index:
        out[method] = {}
        for column in frames[0].columns:
            values = [float(frame.at[method, column]) for frame in frames]
            if not np.isfinite(values).all():  # a figure the method does not measure (a baseline's predict time)
                out[method][column] = {"mean": None, "sd": None, "values": [None] * len(values)}
                continue
            out[method][column] = {"mean": float(np.mean(values)), "sd": _spread(values), "values": values}
    return out


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: Any, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _report(run: _Run, results: dict[str, Any]) -> str:
    model, data = results["model"], results["data"]
    provenance = data["provenance"]
    if provenance.get("origin"):
        shas = provenance.get("member_sha256") or {provenance.get("archive"): provenance.get("archive_sha256")}
        origin = f"{provenance['origin']}; " + "; ".join(f"`{k}` sha256 `{v}`" for k, v in shas.items())
    else:
        origin = data["source"]
    annotation = run.annotations[0]
    summary = results["annotation_summary"]

    def cell(entry: dict[str, Any], digits: int = 3) -> str:
        if entry["mean"] is None:  # a figure the method does not measure
            return "—"
        return f"{_number(entry['mean'], digits)} ± {_number(entry['sd'], digits)}"

    annotation_rows = [
        [f"`{name}`"]
        + [cell(row[k]) for k in ("macro_f1", "macro_precision", "accuracy")]
        + [cell(row["fit_seconds"], 1), cell(row["predict_seconds"], 2)]
        for name, row in summary.items()
    ]
    fits = [fit["annotator"] for fit in run.fits]
    split = run.splits[0]
    verdict = verdict_lines(results)
    wins, losses, ties = verdict["wins"], verdict["losses"], verdict["ties"]
    timings = results["timings_seconds"]
    recipe = run.fits[0]["recipe"]
    seeds = results["seeds"]
    n_splits, n_untrained = len(run.splits), len(run.untrained)
    denoising, n_corruptions = results["denoising"], len(run.denoising)
    denoising_summary = results["denoising_summary"]
    runs = {
        "cellplm_zero_shot": (f"{run.names['pretrained']}, zero-shot", f"{n_corruptions} corruptions"),
        "cellplm_untrained": (
            f"{run.model_name} architecture, untrained (random weights), zero-shot",
            f"{n_untrained} initialisations × {n_corruptions} corruptions",
        ),
    }
    runs |= {name: (f"`{name}`", f"{n_corruptions} corruptions") for name in DENOISING_BASELINES}
    denoising_rows = [
        [runs[method][0]] + [cell(row[key]) for key in DENOISING_FIGURES] + [runs[method][1]]
        for method, row in denoising_summary.items()
    ]
    n_hidden = [c["pretrained"]["methods"][0]["scores"]["n_hidden"] for c in denoising["corruptions"]]
    # the number hidden per cell follows its non-zero count, so every corruption hides as many (other) entries
    hidden = f"{n_hidden[0]:,} entries each" if len(set(n_hidden)) == 1 else f"{', '.join(map(str, n_hidden))} entries"
    lines = [
        f"# opencellplm demo: {model['name']} on {data['name']}",
        "",
        f"Written {results['created']} by opencellplm {results['opencellplm_version']} "
        f"(`opencellplm demo`, seed {run.seed}).",
        "",
        "## Where CellPLM wins and where it loses",
        "",
        f"Ground truth: {data['ground_truth']}.",
        "",
        "Computed from the tables below (clustering: mean over Leiden seeds, and for the untrained architecture over "
        f"{n_untrained} random initialisations too; zero-shot denoising: mean over {n_corruptions} seeded "
        f"corruptions, and for the untrained architecture over its {n_untrained} initialisations too; annotation: "
        f"mean over {n_splits} seeded splits, each scored on its held-out test cells). A difference is a win or a "
        "loss only when it exceeds the combined sd of the two sides over those seeds (sqrt(sd1² + sd2²)); a smaller "
        "one is a tie within sd, since the seeds alone move the figures that much.",
        "",
        "**Wins**" + ("" if wins else ": none."),
        "",
        *[f"- {line}" for line in wins],
        *([""] if wins else []),
        "**Losses**" + ("" if losses else ": none."),
        "",
        *[f"- {line}" for line in losses],
        *([""] if losses else []),
        *(
            ["**Ties within sd** (difference of the means, combined sd)", "", *[f"- {line}" for line in ties], ""]
            if ties
            else []
        ),
        "## What was run",
        "",
        f"- **Model**: `{model['name']}`, {model['n_parameters']:,} parameters, {model['n_genes_vocabulary']:,} genes "
        f"in its vocabulary ({model['n_genes_matched']} of the data's {data['n_genes']} matched, "
        f"{model['n_genes_matched_untrained']} by the untrained architecture); weights "
        f"`{model['source'].get('path', 'in memory')}`, sha256 `{model['weights_sha256'] or 'n/a (in memory)'}`.",
        f"- **Data**: `{data['name']}`, {data['n_cells']} cells x {data['n_genes']} genes, raw counts, labels "
        f"`obs['{run.labels_key}']` ({len(data['label_counts'])} cell types, {data['n_labelled']} labelled cells). "
        f"Source: {origin}.",
        f"- **Representations**: {run.names['pretrained']}; the same architecture with random weights, "
        f"{n_untrained} initialisations (`opencellplm.demo.untrained_copy(model, seed)`, i.e. "
        "`torch.manual_seed(seed)` then `CellPLM(CellPLMModule(model.config), model.genes, "
        "meta={'gene_id_rule': model.gene_id_rule})`, the same vocabulary and gene-id rule as the pretrained "
        f"model, seeds {run.seed}..{run.seed + n_untrained - 1}), to show what pretraining adds; "
        f"{run.names['pca']} (`opencellplm.baselines.pca_embedding`, seed {run.seed}).",
        f"- **Clustering** (`opencellplm.tasks.score_clustering`): {N_NEIGHBORS}-nearest-neighbour graph, Leiden at "
        f"resolutions {', '.join(f'{r:g}' for r in run.clustering.scores[run.names['pca']][0].resolutions)}, seeds "
        f"{seeds['leiden']}; ARI and NMI against the labels.",
        f"- **Denoising** (`opencellplm.tasks.Denoiser.score(protocol='hidden', fraction={denoising['fraction']:g}, "
        f"fine_tune=False)`, zero-shot, the paper's protocol): on each of {n_corruptions} seeded corruptions (seeds "
        f"{seeds['denoising_corruptions']}), {denoising['fraction']:.0%} of each cell's non-zero counts are hidden "
        f"({hidden}); every method denoises the same corrupted matrix, scored on "
        "the hidden entries after normalising to 1e4 per cell and log1p, over the "
        f"{denoising['n_genes']} genes in the model's vocabulary. The pretrained model and the {n_untrained} "
        "untrained initialisations (the same weights as above) predict through their NB decoder without any "
        "fitting; `knn_smoothing` smooths each cell's counts over its nearest neighbours, `mean_profile` gives every "
        "cell the data set's mean profile at its own library size (what a decoder that ignores the cell predicts).",
        f"- **Annotation** (`opencellplm.tasks.CellTypeAnnotator`, {annotation.mode}): {n_splits} stratified splits "
        f"(`train_test_split(test_size={TEST_FRACTION}, stratify=labels, random_state=seed)`, seeds "
        f"{seeds['splits']}), each {split['n_train']} training cells (of which {fits[0]['n_validation']} held out "
        f"for validation) and **{split['n_test']} test cells**, never seen in fine-tuning. Fine-tuned from "
        f"{model['name']} on each for at most {recipe['steps']} steps (steps run: "
        f"{', '.join(str(f['steps']) for f in fits)}; the state of best validation macro F1 kept: "
        f"{', '.join(_number(f['best_val_f1']) for f in fits)}), lr {recipe['lr']:g}, evaluation every "
        f"{recipe['eval_every']} steps. The baselines (`celltypist_style`, `l1_logistic_cv`, `knn_on_pca`) learn "
        "from the same training cells and predict the same test cells.",
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
        "## Zero-shot denoising",
        "",
        f"Hidden-entry errors (lower is better) and Pearson r (higher is better): mean ± sd over the corruptions "
        f"(seeds {seeds['denoising_corruptions']}), and for the untrained architecture over its {n_untrained} "
        "initialisations on each of them.",
        "",
        _markdown_table(["method (zero-shot)", "RMSE", "MAE", "Pearson r", "sd over"], denoising_rows),
        "",
        "## Cell type annotation",
        "",
        f"Mode: **{annotation.mode}**; mean ± sd over {n_splits} seeded splits (seeds {seeds['splits']}), each "
        f"scored on its **{split['n_test']} test cells**"
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
