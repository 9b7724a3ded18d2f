"""The paper's table of components: the same short pretraining with one component switched off at a time.

Usage:
    python benchmarks/ablations.py --work DIR [--steps 200] [--seeds 0 1] [--variants full ae_latent ...]
                                   [--annotation-steps 100] [--json OUT] [--markdown OUT]

Every variant pretrains the ``small`` configuration on the same corpus, from the same initial tables, with the same
settings as the shipped model's recipe (``scripts/pretrain_shipped_model.py``: its data sets, cell sets of at most
500 cells, the gene embeddings started at the corpus's principal axes within data sets, the NB decoder's bias at the
corpus's log mean gene shares, half of each set's cells thinned to a new depth, the encoder at a tenth of the
decoder's learning rate, the state with the lowest validation loss kept), for ``--steps`` steps per seed. Mouse
symbols are upper-cased (no ortholog table, which needs an extra). The variants:

``full``
    The model as shipped: Gaussian-mixture latent, 2-D sinusoidal positional encoding of spatial cells, cell-level
    masking (75% of a set's cells lose about 25% of their genes; the other cells stay whole), and the batch-aware
    decoder (each cell's batch and data set as decoder covariates).
``ae_latent``
    A plain autoencoder latent (one linear projection, no mixture prior and no KL terms) instead of the GMVAE.
``no_positional``
    No positional encoding (only the MERFISH sets of the corpus have coordinates).
``gene_masking``
    Gene-level masking only: every cell loses genes, 18.75% on average (0.75 x 0.25: the same share of entries
    as cell-level masking), so no cell of a set is whole.
``no_batch_decoder``
    The decoder without covariates (no batch, no data set).

Each pretrained model is then scored three ways, on data held out of the corpus:

- zero-shot clustering (:func:`opencellplm.tasks.score_clustering`: ARI and NMI best over Leiden resolutions, and
  the ARI at the NMI-chosen resolution) on PBMC 68k reduced and on a stratified 1,000-cell subset of the Baron
  human pancreas, Leiden seed 0;
- masked-gene reconstruction: 10% of each cell's non-zero counts of the Baron subset hidden, the zero-shot NB
  decoder's RMSE there on log-normalised values (:meth:`opencellplm.tasks.Denoiser.score`, ``protocol="hidden"``);
- one fine-tuned task: cell-type annotation of the Baron subset (stratified 80/20 split, the types with >= 10
  cells, ``--annotation-steps`` steps), macro F1 on the test cells.

Mean and sample sd over the pretraining seeds, in one table (``--markdown``), and every number (``--json``).
A run folder that finished is reused, so a stopped study continues.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from opencellplm import CellPLM, configs, datasets
from opencellplm.data.corpus import prepare_corpus
from opencellplm.train import pretrain
from opencellplm.train.pretrain import decoder_bias_from_corpus, gene_embedding_from_pca

logger = logging.getLogger("ablations")

RECIPE = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_shipped_model.py"
VARIANTS = {
    "full": {},
    "ae_latent": {"latent": {"kind": "ae"}},
    "no_positional": {"positional_encoding": "none"},
    "gene_masking": {"masking": {"cell_rate": 1.0, "gene_rate": 0.1875}},
    "no_batch_decoder": {"decoder": {"n_batches": 0, "n_datasets": 0}},
}
#: The table's columns: key, label, whether higher is better.
COLUMNS = (
    ("pbmc68k_ari_best", "PBMC 68k ARI (best)", True),
    ("pbmc68k_nmi_best", "PBMC 68k NMI (best)", True),
    ("baron_ari_best", "Baron ARI (best)", True),
    ("baron_ari_at_nmi", "Baron ARI (NMI-chosen)", True),
    ("reconstruction_rmse", "masked RMSE (Baron)", False),
    ("annotation_macro_f1", "annotation macro F1 (Baron)", True),
)
BARON_CELLS = 1000
MIN_CELLS_PER_TYPE = 10


def _recipe():
    """The shipped model's recipe script, imported by path (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("pretrain_shipped_model", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(work: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The corpus and the initial tables every variant starts from (made once, then read back)."""
    recipe = _recipe()
    corpus = work / "corpus"
    tables = work / "init.npz"
    if not (corpus / "manifest.json").exists():
        parts, _ = recipe.load_corpus_data(recipe.DATASETS, None)
        pancreas = recipe.load_by_symbol("baron_mouse_pancreas", None)
        parts["baron_mouse_pancreas"] = pancreas[(pancreas.obs["sample"] != recipe.VALIDATION_DONOR).to_numpy()].copy()
        keep = recipe.corpus_genes(parts.values())
        (work / "data").mkdir(parents=True, exist_ok=True)
        files = []
        for name, adata in parts.items():
            path = work / "data" / f"{name}.h5ad"
            adata[:, [g in keep for g in adata.var_names]].copy().write_h5ad(path)
            files.append(path)
        prepare_corpus(files, corpus, sample_key="sample", max_cells=recipe.MAX_CELLS, shard_cells=5000)
    if not tables.exists():
        model, train = configs.load("small")
        embedding = gene_embedding_from_pca(corpus, int(model["hidden_dim"]), seed=0, balance_datasets=True)
        np.savez(tables, gene_embedding=embedding, decoder_bias=decoder_bias_from_corpus(corpus, seed=0))
    with np.load(tables) as init:
        return corpus, init["gene_embedding"], init["decoder_bias"]


def _merge(base: dict, change: dict) -> dict:
    out = dict(base)
    for key, value in change.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def pretrain_variant(work: Path, corpus: Path, init, variant: str, seed: int, steps: int) -> Path:
    """Pretrain one variant for one seed (or reuse the finished run) and return its run folder."""
    run = work / "runs" / f"{variant}-seed{seed}"
    if (run / "config.json").exists():  # an earlier run of this variant: only with the same length
        done = json.loads((run / "config.json").read_text())["train"]["steps"]
        if done != steps:
            raise SystemExit(f"{run} holds a run of {done} steps, not {steps}: use another --work or --steps {done}")
    if (run / "summary.json").exists():
        return run
    recipe = _recipe()
    model, train = configs.load("small")
    model = _merge(model, {"masking": {"thin_rate": recipe.THIN_RATE}})
    model = _merge(model, VARIANTS[variant])
    train = replace(
        train,
        steps=steps,
        seed=seed,
        encoder_lr_ratio=0.1,
        warmup_steps=min(train.warmup_steps, steps // 4),
        eval_every=max(steps // 4, 1),
        checkpoint_every=max(steps // 4, 1),
    )
    logger.info("pretraining %s, seed %d, %d steps", variant, seed, steps)
    resume = (run / "state.pt").exists()  # a run stopped part-way continues where it was
    pretrain(corpus, run, model=model, train=train, gene_embedding=init[0], decoder_bias=init[1], resume=resume)
    return run


def _stratified(adata, n: int, key: str, seed: int = 0):
    from sklearn.model_selection import train_test_split

    if adata.n_obs <= n:
        return adata
    rows, _ = train_test_split(np.arange(adata.n_obs), train_size=n, stratify=adata.obs[key], random_state=seed)
    return adata[np.sort(rows)].copy()


def evaluation_data() -> dict:
    pbmc = datasets.pbmc68k_reduced()
    baron = _stratified(datasets.load_dataset("baron_human_pancreas"), BARON_CELLS, "cell_type")
    counts = baron.obs["cell_type"].value_counts()
    baron = baron[baron.obs["cell_type"].isin(counts.index[counts >= MIN_CELLS_PER_TYPE]).to_numpy()].copy()
    baron.obs["cell_type"] = baron.obs["cell_type"].astype(str).astype("category")
    return {"pbmc68k": pbmc, "baron": baron}


def score(run: Path, data: dict, seed: int, annotation_steps: int) -> dict:
    """The three evaluations of one pretrained model (module docstring)."""
    from sklearn.model_selection import train_test_split

    from opencellplm.tasks import AnnotationRecipe, CellTypeAnnotator, Denoiser, score_clustering

    model = CellPLM.from_pretrained(run / "model")
    model.meta["gene_id_rule"] = "upper"  # the corpus upper-cased symbols (mouse genes)
    out = {}
    for name, adata in data.items():
        embedding = model.get_latent_representation(adata)
        result = score_clustering(adata, "cell_type", embeddings={"cellplm": embedding}, baselines_run=(), seeds=(0,))
        (scores,) = result.scores["cellplm"]
        out[f"{name}_ari_best"], out[f"{name}_nmi_best"] = scores.best_ari, scores.best_nmi
        out[f"{name}_ari_at_nmi"] = scores.ari_at_nmi_choice
    baron = data["baron"]
    hidden = Denoiser.from_pretrained(model).score(baron, protocol="hidden", seed=seed, fine_tune=False, baselines=())
    out["reconstruction_rmse"] = hidden.methods[0].scores["rmse"]
    labels = baron.obs["cell_type"]
    train, _ = train_test_split(np.arange(baron.n_obs), test_size=0.2, stratify=labels, random_state=seed)
    train_cells = np.zeros(baron.n_obs, dtype=bool)
    train_cells[train] = True
    annotator = CellTypeAnnotator.from_pretrained(model, recipe=AnnotationRecipe(steps=annotation_steps, seed=seed))
    annotator.fit(baron, "cell_type", train_cells=train_cells)
    result = annotator.score(baron, "cell_type", test_cells=~train_cells, baselines=())
    out["annotation_macro_f1"] = result.methods[0].scores["macro_f1"]
    summary = json.loads((run / "summary.json").read_text())
    out["pretrain_minutes"] = summary["seconds"] / 60
    out["best_val_loss"], out["best_step"] = summary["best_val_loss"], summary["best_step"]
    return out


def table(rows: list[dict], variants: list[str]) -> str:
    """Mean ± sample sd per variant, with each column's difference from ``full`` when there is one."""
    header = [f"{label} {'↑' if higher else '↓'}" for _, label, higher in COLUMNS]
    lines = ["| variant | seeds | " + " | ".join(header) + " | pretraining min |"]
    lines.append("|---" * (len(COLUMNS) + 3) + "|")
    by_variant = {v: [r for r in rows if r["variant"] == v] for v in variants}
    for variant in variants:
        mine = by_variant[variant]
        if not mine:
            continue
        cells = []
        for key, _, _ in COLUMNS:
            values = np.array([r[key] for r in mine], dtype=float)
            sd = f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else ""
            cell = f"{values.mean():.3f}{sd}"
            if variant != "full" and by_variant.get("full"):
                full = np.mean([r[key] for r in by_variant["full"]])
                delta = values.mean() - full
                cell += f" ({'+' if delta >= 0 else ''}{delta:.3f})"
            cells.append(cell)
        minutes = np.mean([r["pretrain_minutes"] for r in mine])
        lines.append(f"| {variant} | {len(mine)} | " + " | ".join(cells) + f" | {minutes:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="folder for the corpus, the runs and the scores")
    parser.add_argument("--steps", type=int, default=200, help="pretraining steps per run (default 200)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="pretraining seeds (default 0 1)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--annotation-steps", type=int, default=100, help="fine-tuning steps of the annotation")
    parser.add_argument("--json", help="write every score here")
    parser.add_argument("--markdown", help="write the table here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=UserWarning)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus, embedding, bias = prepare(work)
    data = evaluation_data()
    rows = []
    for seed in args.seeds:
        for variant in args.variants:
            started = time.perf_counter()
            run = pretrain_variant(work, corpus, (embedding, bias), variant, seed, args.steps)
            scores_file = run / "ablation_scores.json"
            scores = json.loads(scores_file.read_text()) if scores_file.exists() else {}
            if scores.get("annotation_steps") != args.annotation_steps:  # none yet, or scored with other settings
                scores = score(run, data, seed, args.annotation_steps) | {"annotation_steps": args.annotation_steps}
                scores_file.write_text(json.dumps(scores, indent=2))
            rows.append({"variant": variant, "seed": seed} | scores)
            logger.info("%s seed %d done in %.1f min: %s", variant, seed, (time.perf_counter() - started) / 60, scores)
    markdown = table(rows, args.variants)
    print(markdown)  # noqa: T201 (a script's output)
    settings = {"steps": args.steps, "seeds": args.seeds, "annotation_steps": args.annotation_steps}
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(markdown + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
