"""The benchmark's tasks: which data sets each runs on, its metrics, and one run per (data set, seed).

Each runner calls the task's own ``score`` (CellPLM and every baseline on the same split and seed, in one call)
and turns its result into records, one per method; it re-implements nothing. A data set loader returns the
data a runner needs; a loader that raises marks that (task, data set) failed and the benchmark goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .._memory import PeakMemory
from .profiles import Profile

if TYPE_CHECKING:
    from ..tasks.result import MethodScore, TaskResult

logger = logging.getLogger(__name__)

Record = dict[str, Any]


@dataclass
class RunContext:
    """What every runner gets: the checkpoint (name or directory), the profile and a folder for artifacts."""

    checkpoint: str
    profile: Profile
    artifacts_dir: Any  # pathlib.Path
    want_artifacts: bool = True


@dataclass
class UnitResult:
    """The records of one (task, data set, seed) and the artifacts written for the report's plots."""

    records: list[Record]
    artifacts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


#: How a data set names its genes: by symbol (matched to the checkpoint's vocabulary), or by ids that follow
#: the checkpoint whatever its vocabulary (simulated from the vocabulary, or prefixed and added to it).
SYMBOLS, FOLLOWS_CHECKPOINT = "symbols", "follows the checkpoint"


@dataclass(frozen=True)
class DatasetCase:
    """One data set of a task: how to load it (``load(profile) -> data``), whether it is simulated, and how it
    names genes (:data:`SYMBOLS` or :data:`FOLLOWS_CHECKPOINT`)."""

    load: Callable[[Profile], Any]
    simulated: bool = False
    note: str = ""
    genes: str = SYMBOLS


@dataclass(frozen=True)
class TaskSpec:
    """A benchmark task: title, two-line protocol, metrics (label and direction), data sets and runner."""

    title: str
    protocol: str
    metrics: dict[str, dict[str, str]]
    primary: str
    datasets: dict[str, DatasetCase]
    run: Callable[[RunContext, str, Any, int], UnitResult]

    def describe(self) -> dict[str, Any]:
        return {"title": self.title, "protocol": self.protocol, "metrics": self.metrics, "primary": self.primary}


def _record(method: str, *, family: str, metrics: dict[str, Any], wall_s=None, peak_mb=None, **extra) -> Record:
    clean = {k: (None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)) for k, v in metrics.items()}
    out = {"method": method, "family": family, "status": "ok", "reason": None, "metrics": clean}
    out |= {"wall_s": None if wall_s is None else round(float(wall_s), 3)}
    out |= {"peak_mb": None if peak_mb is None else round(float(peak_mb), 1)}
    return out | extra


def _skipped(method: str, family: str, reason: str) -> Record:
    return {"method": method, "family": family, "status": "skipped", "reason": reason, "metrics": {}}


def method_record(
    m: MethodScore, protocol: dict[str, Any], metrics: tuple[str, ...], name: str | None = None
) -> Record:
    """The record of one method of a task's ``score`` result: the task's ``metrics`` of its scores, its wall time
    and peak memory, and the fine-tuning steps it ran (``steps_run``; None for a baseline)."""
    steps = m.params.get("steps") if m.family == "cellplm" else None
    if isinstance(steps, list):  # one fit per fold or seed
        steps = steps[0] if len(steps) == 1 else ", ".join(map(str, steps))
    return _record(
        name or m.method,
        family=m.family,
        metrics={key: m.scores.get(key) for key in metrics},
        wall_s=m.seconds,
        peak_mb=m.peak_mb,
        protocol=protocol | {"steps_run": steps},
    )


def method_records(
    result: TaskResult,
    protocol: dict[str, Any],
    metrics: tuple[str, ...],
    *,
    rename: Callable[[str], str] | None = None,
) -> list[Record]:
    """The records of a task's ``score`` result: one per method (:func:`method_record`), then one per skipped
    method with the reason."""
    records = [
        method_record(m, protocol, metrics, None if rename is None else rename(m.method)) for m in result.methods
    ]
    return records + [_skipped(name, "baseline", why) for name, why in result.skipped.items()]


def _subset(adata, max_cells: int | None, seed: int = 0, *, stratify: str | None = None):
    """A seeded subset of at most ``max_cells`` cells (stratified by ``obs[stratify]`` when given), in file order."""
    if max_cells is None or adata.n_obs <= max_cells:
        return adata
    rng = np.random.default_rng(seed)
    if stratify is None:
        rows = rng.choice(adata.n_obs, max_cells, replace=False)
    else:
        labels = adata.obs[stratify].astype(str).to_numpy()
        share = max_cells / adata.n_obs
        rows = np.concatenate(
            [
                rng.choice(where, max(1, round(len(where) * share)), replace=False)
                for where in (np.flatnonzero(labels == label) for label in np.unique(labels))
            ]
        )
    return adata[np.sort(rows)].copy()


# -------------------------------------------------------------------------------------------- clustering
def _load_pbmc68k(profile: Profile):
    from .. import datasets

    return _subset(datasets.pbmc68k_reduced(), profile.max_cells, stratify="cell_type")


#: Annotation keeps the cell types with at least this many cells in the (subset) data: a type of one or two
#: cells cannot be split 80/20 by stratification, and its F1 on zero or one test cell says nothing.
MIN_CELLS_PER_TYPE = 10


def _load_baron(species: str, *, min_cells_per_type: int = 0, donor: str | None = None):
    def load(profile: Profile):
        from .. import datasets

        adata = datasets.load_dataset(f"baron_{species}_pancreas")
        if donor is not None:
            adata = adata[(adata.obs["sample"] == donor).to_numpy()].copy()
        adata = _subset(adata, profile.max_cells, stratify="cell_type")
        counts = adata.obs["cell_type"].value_counts()
        adata = adata[adata.obs["cell_type"].isin(counts.index[counts >= min_cells_per_type]).to_numpy()].copy()
        adata.obs["cell_type"] = adata.obs["cell_type"].astype(str).astype("category")
        return adata

    return load


#: The untrained architecture (random weights) in each zero-shot unit: this many initialisations, so that
#: "pretraining helps" is a comparison with the spread of random networks, not with one draw.
N_UNTRAINED = 5
UNTRAINED = "cellplm_untrained"


def untrained_seeds(seed: int) -> list[int]:
    """The weight seeds of the untrained initialisations of unit ``seed``: ``5 * seed + i``, distinct across units."""
    return [N_UNTRAINED * seed + i for i in range(N_UNTRAINED)]


def _untrained_record(record: Record, weights_seed: int) -> Record:
    """One initialisation's record: the method ``cellplm_untrained`` and its weight seed (``init``), so that the
    report takes the mean and sd over every initialisation of every unit seed."""
    return record | {"method": UNTRAINED, "init": weights_seed}


def run_clustering(ctx: RunContext, dataset: str, adata, seed: int) -> UnitResult:
    from .. import CellPLM
    from ..demo import untrained_copy
    from ..tasks.clustering import score_clustering

    trained = CellPLM.from_pretrained(ctx.checkpoint)
    embeddings, seconds, peaks = {}, {}, {}
    for name, weights in [("cellplm_zero_shot", None)] + [(f"{UNTRAINED}/{w}", w) for w in untrained_seeds(seed)]:
        with PeakMemory(trained.device) as peak:
            tic = time.perf_counter()
            # an untrained copy: the same vocabulary and gene-id rule, random weights (one at a time in memory)
            model = trained if weights is None else untrained_copy(trained, weights)
            embeddings[name] = model.get_latent_representation(adata)
            seconds[name] = time.perf_counter() - tic
        peaks[name] = peak.mb
    result = score_clustering(
        adata, "cell_type", embeddings=embeddings, embedding_key=None, baselines_run=("pca", "scvi"), seeds=(seed,)
    )
    records = []
    for name, (scores,) in result.scores.items():
        metrics = {
            "ari_best": scores.best_ari,
            "nmi_best": scores.best_nmi,
            "ari_fixed": scores.ari_fixed,
            "nmi_fixed": scores.nmi_fixed,
            "ari_at_nmi_choice": scores.ari_at_nmi_choice,
        }
        family = "cellplm" if name.startswith("cellplm") else "baseline"
        wall = seconds.get(name, result.seconds.get(name))
        peak_mb = peaks.get(name, result.peak_mb.get(name))
        record = _record(name, family=family, metrics=metrics, wall_s=wall, peak_mb=peak_mb, protocol=result.settings)
        untrained = name.startswith(f"{UNTRAINED}/")
        records.append(_untrained_record(record, int(name.split("/")[1])) if untrained else record)
    records += [_skipped(name, "baseline", why) for name, why in result.skipped.items()]
    artifacts = {}
    if ctx.want_artifacts and seed == 0:
        path = ctx.artifacts_dir / f"umap_clustering_{dataset}.npz"
        # the first initialisation pictures the untrained architecture
        representations = {k: v for k, v in embeddings.items() if not k.startswith(f"{UNTRAINED}/")}
        representations[UNTRAINED] = embeddings[f"{UNTRAINED}/{untrained_seeds(seed)[0]}"]
        from ..baselines import pca_embedding

        representations["pca"] = pca_embedding(adata, seed=0).prediction
        np.savez_compressed(path, labels=adata.obs["cell_type"].to_numpy().astype(str), **representations)
        artifacts["umap"] = [{"task": "clustering", "dataset": dataset, "seed": seed, "path": path.name}]
    return UnitResult(records, artifacts)


# -------------------------------------------------------------------------------------------- integration
#: The obs columns the integration runner reads: each cell's batch and its cell type.
BATCH, CELL_TYPE = "batch", "cell_type"


def _load_baron_donors(profile: Profile):
    """The Baron human pancreas, its four donors the batches."""
    adata = _load_baron("human")(profile)
    adata.obs[BATCH] = adata.obs["sample"].astype(str).astype("category")
    return adata


def _load_pancreas_species(profile: Profile):
    """Baron human and mouse (donor mouse2, never in a corpus) pancreas together, the species the batches: the
    genes the two share once mouse symbols are upper-cased (12,473 genes), the cell types by their shared Cell
    Ontology names; each species subset to half of ``max_cells``."""
    import anndata as ad

    half = replace(profile, max_cells=None if profile.max_cells is None else profile.max_cells // 2)
    human = _load_baron("human")(half)
    mouse = _load_baron("mouse", donor="mouse2")(half)
    mouse.var_names = mouse.var_names.str.upper()
    mouse = mouse[:, ~mouse.var_names.duplicated()]
    shared = human.var_names.intersection(mouse.var_names)
    if len(shared) == 0:
        raise ValueError("the human and mouse pancreas share no gene symbol once mouse symbols are upper-cased")
    parts = {"human": human[:, shared], "mouse": mouse[:, shared]}
    adata = ad.concat(parts, label=BATCH, index_unique="-")
    adata.obs[CELL_TYPE] = adata.obs[CELL_TYPE].astype(str).astype("category")
    return adata


def run_integration(ctx: RunContext, dataset: str, adata, seed: int) -> UnitResult:
    from .. import CellPLM
    from ..tasks.integration import SCORES, BatchIntegrator, IntegrationRecipe, score_integration, timed_embedding

    model = CellPLM.from_pretrained(ctx.checkpoint)
    embeddings, seconds, peaks = {}, {}, {}
    zero_shot = timed_embedding(lambda: model.get_latent_representation(adata, sample_key=BATCH), model.device)
    embeddings["cellplm_zero_shot"], seconds["cellplm_zero_shot"], peaks["cellplm_zero_shot"] = zero_shot
    recipe = IntegrationRecipe(steps=ctx.profile.integration_steps, seed=seed)
    integrator = BatchIntegrator.from_pretrained(model, recipe=recipe)
    fine_tuned = timed_embedding(lambda: integrator.fit(adata, BATCH).get_latent_representation(adata), model.device)
    embeddings["cellplm_fine_tuned"], seconds["cellplm_fine_tuned"], peaks["cellplm_fine_tuned"] = fine_tuned
    result = score_integration(
        adata, BATCH, CELL_TYPE, embeddings=embeddings, seconds=seconds, peak_mb=peaks, seed=seed
    )
    summary = integrator.summary
    protocol = {
        "n_cells": result.n_cells,
        "n_batches": result.n_batches,
        "n_cell_types": result.n_cell_types,
        "steps": recipe.steps,
        "fine_tuning_kept": summary.kept,
    }
    records = method_records(result, protocol, SCORES)
    artifacts = {}
    if ctx.want_artifacts and seed == 0:
        path = ctx.artifacts_dir / f"integration_umap_{dataset}.npz"
        shown = {name: np.asarray(e, dtype=np.float32) for name, e in result.embeddings.items()}
        labels = adata.obs[CELL_TYPE].to_numpy().astype(str)
        np.savez_compressed(path, labels=labels, batches=adata.obs[BATCH].to_numpy().astype(str), **shown)
        artifacts["integration_umap"] = [{"task": "integration", "dataset": dataset, "seed": seed, "path": path.name}]
    return UnitResult(records, artifacts)


# -------------------------------------------------------------------------------------------- annotation
def run_annotation(ctx: RunContext, dataset: str, adata, seed: int) -> UnitResult:
    from sklearn.model_selection import train_test_split

    from ..tasks import AnnotationRecipe, CellTypeAnnotator

    train, _ = train_test_split(
        np.arange(adata.n_obs), test_size=0.2, stratify=adata.obs["cell_type"], random_state=seed
    )
    train_cells = np.zeros(adata.n_obs, dtype=bool)
    train_cells[train] = True
    recipe = AnnotationRecipe(steps=ctx.profile.annotation_steps, seed=seed)
    records = []
    for pretrained in (True, False):
        make = CellTypeAnnotator.from_pretrained if pretrained else CellTypeAnnotator.from_scratch
        annotator = make(ctx.checkpoint, recipe=recipe)
        with PeakMemory(annotator.base.device) as fit_peak:  # the device score measures its prediction on
            annotator.fit(adata, "cell_type", train_cells=train_cells)
        baselines = ("celltypist_style", "l1_logistic_cv", "knn_on_pca", "celltypist", "scanvi") if pretrained else ()
        result = annotator.score(adata, "cell_type", test_cells=~train_cells, baselines=baselines, seed=seed)
        # CellPLM's peak covers its fit (before score) and its prediction (in score)
        result.methods[0] = replace(result.methods[0], peak_mb=max(fit_peak.mb, result.methods[0].peak_mb or 0.0))
        protocol = {"split": "stratified 80/20", "n_test": result.n_test, "mode": result.mode, "steps": recipe.steps}
        ours = "cellplm_fine_tuned" if pretrained else "cellplm_from_scratch"
        metrics = ("macro_f1", "macro_precision", "accuracy")
        records += method_records(
            result, protocol, metrics, rename=lambda m, ours=ours: ours if m.startswith("cellplm") else m
        )
    return UnitResult(records)


# -------------------------------------------------------------------------------------------- denoising
def _loader(name: str):
    def load(profile: Profile):
        from .. import datasets

        return _subset(datasets.load_dataset(name), profile.max_cells)

    return load


def run_denoising(ctx: RunContext, dataset: str, adata, seed: int) -> UnitResult:
    from ..demo import untrained_copy
    from ..tasks import Denoiser, DenoisingRecipe

    denoiser = Denoiser.from_pretrained(
        ctx.checkpoint, recipe=DenoisingRecipe(steps=ctx.profile.denoising_steps, seed=seed)
    )
    result = denoiser.score(
        adata,
        protocol="hidden",
        seed=seed,
        fine_tune=True,
        from_scratch=True,
        baselines=("unchanged", "knn_smoothing", "mean_profile", "magic", "scvi"),
    )
    # Each untrained initialisation zero-shot, on the same corrupted matrix (the corruption follows the seed).
    untrained = {
        w: Denoiser.from_pretrained(untrained_copy(denoiser.base, w)).score(
            adata, protocol="hidden", seed=seed, fine_tune=False, baselines=()
        )["cellplm_zero_shot"]
        for w in untrained_seeds(seed)
    }
    protocol = {"protocol": "hidden", "fraction": result.fraction, "n_cells": result.n_cells, "n_genes": result.n_genes}
    protocol |= {"steps": ctx.profile.denoising_steps}
    metrics = ("rmse", "mae", "pearson")
    records = method_records(result, protocol, metrics)
    records += [_untrained_record(method_record(m, protocol, metrics), w) for w, m in untrained.items()]
    return UnitResult(records)


# -------------------------------------------------------------------------------------------- imputation
def bdtnp_pair(max_cells: int | None = None) -> dict[str, Any]:
    """The BDTNP atlas (spatial, 3-D) and the Drosophila Drop-seq reference, as pseudo counts with ``dmel:`` ids.

    Neither ships counts: the atlas's normalised intensities enter as ``rint(100 * intensity)``, the
    reference's ``log2(1 + scaled counts)`` as ``rint((2**v - 1) / (2**v_min - 1))`` per cell
    (:mod:`opencellplm.data.pseudocounts`). Fly ids get a prefix, so that no fly gene borrows a human gene's
    row by a shared symbol (the vocabulary is extended instead). ``max_cells``: a seeded subset of each.
    Returns the arguments of the imputation runner.
    """
    import anndata as ad

    from .. import datasets
    from ..data.pseudocounts import counts_from_intensities, counts_from_log2

    atlas, drosophila = datasets.bdtnp_atlas(), datasets.drosophila_scrnaseq()
    atlas = _subset(atlas, max_cells)
    spatial_counts, spatial_note = counts_from_intensities(
        atlas.X.toarray() if hasattr(atlas.X, "toarray") else atlas.X
    )
    reference_counts, reference_note = counts_from_log2(
        drosophila.X.toarray() if hasattr(drosophila.X, "toarray") else drosophila.X
    )
    spatial = ad.AnnData(spatial_counts, obs=atlas.obs[[]].copy(), obsm={"spatial": atlas.obsm["spatial"]})
    spatial.var_names = [f"dmel:{g}" for g in atlas.var_names]
    reference = ad.AnnData(reference_counts, obs=drosophila.obs[[]].copy())
    reference.var_names = [f"dmel:{g}" for g in drosophila.var_names]
    reference = _subset(reference, max_cells)
    values = f"spatial {spatial_note}; reference {reference_note}"
    return {
        "spatial": spatial,
        "reference": reference,
        "values": values,
        "max_per_bin": None,
        "extend": True,
        "max_cells": 1000,
    }


def merfish_pair(max_cells: int | None = None, n_genes: int = 2000) -> dict[str, Any]:
    """MERFISH U-2 OS: sample 1 as the spatial data, samples 2-3 as the reference, raw counts of the ``n_genes``
    most variable genes of the reference (expressed in both; the panel's control probes left out). ``max_cells``: a
    seeded subset of each."""
    import scanpy as sc

    from .. import datasets
    from ..data.genes import is_control_probe

    merfish = datasets.merfish_u2os()
    spatial = merfish[merfish.obs["sample"] == "sample_1"].copy()
    reference = merfish[merfish.obs["sample"] != "sample_1"].copy()
    spatial = _subset(spatial, max_cells)
    reference = _subset(reference, max_cells)
    expressed = (np.asarray((spatial.X > 0).sum(0)).ravel() > 0) & (np.asarray((reference.X > 0).sum(0)).ravel() > 0)
    expressed &= ~np.array([is_control_probe(g) for g in merfish.var_names])  # Blank- probes are not genes
    spatial, reference = spatial[:, expressed].copy(), reference[:, expressed].copy()
    log = reference.copy()
    sc.pp.normalize_total(log, target_sum=1e4)
    sc.pp.log1p(log)
    sc.pp.highly_variable_genes(log, flavor="seurat", n_top_genes=min(n_genes, log.n_vars))
    variable = log.var["highly_variable"].to_numpy()
    return {
        "spatial": spatial[:, variable].copy(),
        "reference": reference[:, variable].copy(),
        "values": f"raw MERFISH counts, the {int(variable.sum())} most variable genes of the reference samples",
        "max_per_bin": 25,
        "extend": False,
        "reference_sample_key": "sample",
        "max_cells": 350,  # the 645 spatial cells form two tiles, one held out for validation
    }


def run_imputation(ctx: RunContext, dataset: str, data: dict, seed: int) -> UnitResult:
    from ..tasks.imputation import ImputationRecipe, SpatialImputer

    profile = ctx.profile
    n_folds = profile.imputation_folds
    folds = sorted(
        {(seed * profile.imputation_folds_scored + i) % n_folds for i in range(profile.imputation_folds_scored)}
    )
    recipe = ImputationRecipe(
        steps=profile.imputation_steps, max_cells=data["max_cells"], max_reference_genes=2000, seed=seed
    )
    imputer = SpatialImputer.from_pretrained(ctx.checkpoint, recipe=recipe)
    want_map = ctx.want_artifacts and seed == 0
    result = imputer.score(
        data["spatial"],
        data["reference"],
        n_folds=n_folds,
        max_per_bin=data["max_per_bin"],
        folds=folds,
        seed=seed,
        variants=profile.imputation_variants,
        baselines=("reference_mean", "spage_style", "tangram", "gimvi"),
        values=data["values"],
        extend_vocabulary=data["extend"],
        reference_sample_key=data.get("reference_sample_key"),
        keep_example=want_map,
    )
    protocol = {
        "values": result.values,
        "folds": folds,
        "n_folds": n_folds,
        "held_out_genes": int(sum(len(result.folds[f]) for f in folds)),
        "steps": profile.imputation_steps,
    }
    records = method_records(result, protocol, ("pearson", "cosine", "rmse"))
    artifacts = {}
    if want_map and result.example is not None:
        path = ctx.artifacts_dir / f"spatial_imputation_{dataset}.npz"
        example = result.example
        predictions = {f"pred:{method}": values for method, values in example["predictions"].items()}
        np.savez_compressed(
            path,
            coords=np.asarray(data["spatial"].obsm["spatial"], dtype=float),
            gene=np.array(str(example["gene"])),
            truth=example["truth"],
            **predictions,
        )
        artifacts["spatial_map"] = [{"task": "imputation", "dataset": dataset, "seed": seed, "path": path.name}]
    return UnitResult(records, artifacts)


# -------------------------------------------------------------------------------------------- perturbation
def _load_perturbseq(profile: Profile):
    return profile  # the data depend on the checkpoint's vocabulary: the runner simulates them


def run_perturbation(ctx: RunContext, dataset: str, profile: Profile, seed: int) -> UnitResult:
    from .. import CellPLM
    from ..datasets import simulate_perturbseq
    from ..tasks import PerturbationPredictor, PerturbationRecipe
    from ..tasks.perturbation import METRICS

    model = CellPLM.from_pretrained(ctx.checkpoint)
    rng = np.random.default_rng(0)  # the same simulated data for every seed; the seed picks the split and fits
    genes = sorted(rng.choice(model.genes, profile.perturbation_genes, replace=False).tolist())
    adata = simulate_perturbseq(
        profile.perturbation_genes,
        n_regulators=min(64, profile.perturbation_genes // 4),  # the simulator's default, capped for tiny profiles
        n_single=profile.perturbation_single,
        n_combo=profile.perturbation_combo,
        cells_per_perturbation=profile.perturbation_cells,
        n_control=10 * profile.perturbation_cells,
        gene_names=genes,
        seed=0,
    )
    predictor = PerturbationPredictor.from_pretrained(
        model, recipe=PerturbationRecipe(steps=profile.perturbation_steps)
    )
    result = predictor.score(adata, seeds=[seed], from_scratch=True)
    table = result.to_frame().xs("all", level="group")
    protocol = {
        "data": f"simulated: {adata.n_obs} cells x {adata.n_vars} genes, knock-downs, singles and pairs",
        "split": "GEARS-style (unseen singles; combinations with 0, 1, 2 genes seen)",
        "n_test_perturbations": int(table["n_perturbations"].iloc[0]),
        "steps": profile.perturbation_steps,
    }
    records = method_records(
        result, protocol, METRICS, rename=lambda name: "cellplm_fine_tuned" if name == "cellplm" else name
    )
    return UnitResult(records)


# -------------------------------------------------------------------------------------------- the registry
HIGHER = "higher"
LOWER = "lower"

TASKS: dict[str, TaskSpec] = {
    "clustering": TaskSpec(
        title="Zero-shot clustering",
        protocol=(
            "Embeddings clustered by Leiden on a 15-NN graph at resolutions 0.1-1.4 (seeded), scored against the "
            "labels by ARI / NMI.\nBest over resolutions (the paper's, optimistic), at resolution 1.0, and ARI at "
            "the NMI-chosen resolution; CellPLM pretrained vs the same architecture untrained (5 random "
            "initialisations per seed) vs PCA (and scVI)."
        ),
        metrics={
            "ari_best": {"label": "ARI (best over res.)", "better": HIGHER},
            "nmi_best": {"label": "NMI (best over res.)", "better": HIGHER},
            "ari_fixed": {"label": "ARI (res. 1.0)", "better": HIGHER},
            "nmi_fixed": {"label": "NMI (res. 1.0)", "better": HIGHER},
            "ari_at_nmi_choice": {"label": "ARI (NMI-chosen res.)", "better": HIGHER},
        },
        primary="ari_best",
        datasets={
            "pbmc68k_reduced": DatasetCase(
                _load_pbmc68k, note="10 types, assigned by correlation with bulk-sorted references"
            ),
            "baron_human_pancreas": DatasetCase(
                _load_baron("human"), note="Baron et al. 2016, 13 types; held out of pretraining and of model choice"
            ),
            "baron_mouse_pancreas": DatasetCase(
                _load_baron("mouse", donor="mouse2"),
                note="Baron et al. 2016, donor mouse2 (12 types): the recipe's labelled validation set (the corpus "
                "has the other donor's cells)",
            ),
        },
        run=run_clustering,
    ),
    "integration": TaskSpec(
        title="Batch-effect removal",
        protocol=(
            "Cells of several batches embedded by CellPLM zero-shot and fine-tuned with its batch-aware decoder given "
            "the batch (cell sets never mix batches), beside PCA, scVI, Harmony and Scanorama.\nscib metrics, "
            "unscaled: bio conservation (NMI, ARI at the NMI-chosen Leiden resolution, cell-type ASW), batch "
            "correction (batch ASW, iLISI, graph connectivity), overall 0.6 bio + 0.4 batch."
        ),
        metrics={
            "overall": {"label": "overall", "better": HIGHER},
            "bio_conservation": {"label": "bio conservation", "better": HIGHER},
            "batch_correction": {"label": "batch correction", "better": HIGHER},
            "nmi": {"label": "NMI", "better": HIGHER},
            "ari": {"label": "ARI", "better": HIGHER},
            "label_asw": {"label": "cell-type ASW", "better": HIGHER},
            "batch_asw": {"label": "batch ASW", "better": HIGHER},
            "ilisi": {"label": "iLISI", "better": HIGHER},
            "graph_connectivity": {"label": "graph connectivity", "better": HIGHER},
        },
        primary="overall",
        datasets={
            "baron_human_donors": DatasetCase(
                _load_baron_donors, note="Baron et al. 2016 human pancreas, 4 donors as batches, 13 types"
            ),
            "pancreas_human_mouse": DatasetCase(
                _load_pancreas_species,
                note="Baron et al. 2016 human and mouse (donor mouse2) pancreas, species as batches, shared genes",
            ),
        },
        run=run_integration,
    ),
    "annotation": TaskSpec(
        title="Cell type annotation",
        protocol=(
            "Stratified 80/20 split per seed; CellPLM fine-tuned (official recipe, early stopping on a validation "
            "share of the training cells) and from scratch,\nbeside CellTypist itself and scANVI (extra "
            "`baselines`), a CellTypist-style logistic regression, L1 logistic regression (C by 5-fold CV) and kNN "
            "on PCA, trained on the same cells; scored on the test cells."
        ),
        metrics={
            "macro_f1": {"label": "macro F1", "better": HIGHER},
            "macro_precision": {"label": "macro precision", "better": HIGHER},
            "accuracy": {"label": "accuracy", "better": HIGHER},
        },
        primary="macro_f1",
        datasets={
            "pbmc68k_reduced": DatasetCase(
                _load_pbmc68k, note="10 types, assigned by correlation with bulk-sorted references"
            ),
            "baron_human_pancreas": DatasetCase(
                _load_baron("human", min_cells_per_type=MIN_CELLS_PER_TYPE),
                note=f"Baron et al. 2016; the types with >= {MIN_CELLS_PER_TYPE} cells in the subset",
            ),
        },
        run=run_annotation,
    ),
    "denoising": TaskSpec(
        title="Denoising",
        protocol=(
            "10% of each cell's non-zero counts hidden (seeded); every method denoises the corrupted matrix, the "
            "untrained architecture zero-shot with 5 random initialisations per seed; MAGIC and scVI (extra "
            "`baselines`) beside kNN smoothing, the mean profile and the corrupted input unchanged.\nRMSE / MAE / "
            "Pearson r at the hidden entries on log1p of counts normalised to 1e4 per cell (genes in the model's "
            "vocabulary)."
        ),
        metrics={
            "rmse": {"label": "RMSE", "better": LOWER},
            "mae": {"label": "MAE", "better": LOWER},
            "pearson": {"label": "Pearson r", "better": HIGHER},
        },
        primary="rmse",
        datasets={
            "pbmc3k": DatasetCase(_loader("pbmc3k")),
            "celltypist_sample": DatasetCase(_loader("celltypist_sample")),
            "mouse_10k_subset": DatasetCase(_loader("mouse_10k_subset")),
        },
        run=run_denoising,
    ),
    "imputation": TaskSpec(
        title="Spatial imputation",
        protocol=(
            "Spatial genes dealt into 5 folds stratified by zero rate; each seed holds out some folds, every method "
            "(CellPLM; Tangram and gimVI from the extra `baselines`; SpaGE-style; the reference mean) sees the rest "
            "and the reference.\nPer held-out gene on log1p values: Pearson r, cosine, RMSE (mean over "
            "genes and folds); BDTNP values are pseudo counts."
        ),
        metrics={
            "pearson": {"label": "Pearson r", "better": HIGHER},
            "cosine": {"label": "cosine", "better": HIGHER},
            "rmse": {"label": "RMSE", "better": LOWER},
        },
        primary="pearson",
        datasets={
            "bdtnp": DatasetCase(
                lambda profile: bdtnp_pair(profile.imputation_max_cells),
                note="BDTNP atlas (3-D) with the Drosophila Drop-seq reference",
                genes=FOLLOWS_CHECKPOINT,  # fly ids, prefixed and added to the vocabulary
            ),
            "merfish": DatasetCase(
                lambda profile: (
                    merfish_pair(profile.imputation_max_cells) | {"max_per_bin": profile.imputation_max_per_bin}
                ),
                note="MERFISH U-2 OS: sample 1 spatial, samples 2-3 reference",
            ),
        },
        run=run_imputation,
    ),
    "perturbation": TaskSpec(
        title="Perturbation prediction",
        protocol=(
            "Simulated Perturb-seq (a seeded random regulatory network drives NB counts); GEARS-style split per "
            "seed; CellPLM fine-tuned and from scratch beside GEARS (extra `baselines`; needs its GO file) and the "
            "no-change, training-mean, additive and linear baselines.\nMean profile of each unseen perturbation "
            "scored against the truth: RMSE and Pearson of the change (all genes, top-20 DE genes), direction accuracy."
        ),
        metrics={
            "rmse": {"label": "RMSE all", "better": LOWER},
            "rmse_top20": {"label": "RMSE top-20", "better": LOWER},
            "pearson_delta": {"label": "Pearson Δ all", "better": HIGHER},
            "pearson_delta_top20": {"label": "Pearson Δ top-20", "better": HIGHER},
            "direction_accuracy_top20": {"label": "direction top-20", "better": HIGHER},
        },
        primary="rmse_top20",
        datasets={"perturbseq_simulated": DatasetCase(_load_perturbseq, simulated=True, genes=FOLLOWS_CHECKPOINT)},
        run=run_perturbation,
    ),
}
