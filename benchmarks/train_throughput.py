"""Training throughput: cells per second of optimizer steps, for a named configuration.

Usage: python benchmarks/train_throughput.py [--task pretrain|annotation] [--config small] [--genes 2000]
                                             [--cells-per-set 1000] [--sets-per-step 4] [--steps 5]
                                             [--precision auto]

``--task pretrain`` builds a synthetic corpus (raw counts, 7% non-zero) in a temporary folder and
pretrains the configuration on it for a few steps in this process. ``--task annotation`` fine-tunes a
cell type annotator (the official recipe, on the same trainer) on the same kind of synthetic counts with
8 labels, from the configuration's architecture. Both print one JSON line with the cells/s of the
optimizer steps (evaluation and checkpoints excluded; cells counted after the 30% cell drop, and for
annotation only the training cells of the loss) after one warm-up run.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from opencellplm import configs
from opencellplm.data.corpus import prepare_corpus
from opencellplm.train import pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="pretrain", choices=["pretrain", "annotation"])
    parser.add_argument("--config", default="small")
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--cells-per-set", type=int, default=1000)
    parser.add_argument("--sets-per-step", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    n_sets = (args.steps + 1) * args.sets_per_step + 2  # + validation sets
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        n = n_sets * args.cells_per_set
        x = sp.random(n, args.genes, density=0.07, format="csr", dtype=np.float32, random_state=rng)
        x.data = (1 + rng.geometric(0.45, size=x.nnz)).astype(np.float32)
        obs = pd.DataFrame({"s": np.repeat(np.arange(n_sets).astype(str), args.cells_per_set)})
        obs.index = obs.index.astype(str)
        ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(args.genes)])).write_h5ad(
            Path(tmp) / "data.h5ad"
        )
        if args.task == "annotation":
            return annotation(args, x, obs)
        prepare_corpus([Path(tmp) / "data.h5ad"], Path(tmp) / "corpus", sample_key="s", max_cells=args.cells_per_set)
        model, train = configs.load(args.config)
        settings = dict(steps=1, sets_per_step=args.sets_per_step, warmup_steps=1, precision=args.precision)
        settings |= dict(val_fraction=2 / n_sets, eval_every=10**6, checkpoint_every=10**6)
        warm = pretrain(Path(tmp) / "corpus", Path(tmp) / "warm", model=model, train=replace(train, **settings))
        timed = pretrain(
            Path(tmp) / "corpus",
            Path(tmp) / "run",
            model=model,
            train=replace(train, **settings | {"steps": args.steps}),
        )
    print(
        json.dumps(
            {
                "task": "pretrain",
                "config": args.config,
                "genes": args.genes,
                "cells_per_set": args.cells_per_set,
                "sets_per_step": args.sets_per_step,
                "steps": args.steps,
                "threads": args.threads,
                "precision": timed["precision"],
                "train_cells_per_s": timed["train_cells_per_s"],
                "warmup_step_cells_per_s": warm["train_cells_per_s"],
            }
        )
    )


def annotation(args: argparse.Namespace, x: sp.csr_matrix, obs: pd.DataFrame) -> None:
    from opencellplm import CellPLM, CellPLMModule, ModelConfig
    from opencellplm.tasks import AnnotationRecipe, CellTypeAnnotator

    genes = [f"G{i}" for i in range(args.genes)]
    obs = obs.assign(cell_type=np.random.default_rng(1).choice([f"t{i}" for i in range(8)], len(obs)))
    adata = ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes))
    model, _ = configs.load(args.config)
    torch.manual_seed(0)
    base = CellPLM(CellPLMModule(ModelConfig.from_dict(model | {"n_genes": args.genes})), genes)
    spec = {"sample_key": "s", "max_cells": args.cells_per_set}
    recipe = AnnotationRecipe(sets_per_step=args.sets_per_step, precision=args.precision, eval_every=10**6)
    CellTypeAnnotator.from_pretrained(base, recipe=replace(recipe, steps=1)).fit(adata, "cell_type", **spec)  # warm-up
    timed = CellTypeAnnotator.from_pretrained(base, recipe=replace(recipe, steps=args.steps))
    timed.fit(adata, "cell_type", **spec)
    print(
        json.dumps(
            {
                "task": "annotation",
                "config": args.config,
                "genes": args.genes,
                "cells_per_set": args.cells_per_set,
                "sets_per_step": args.sets_per_step,
                "steps": args.steps,
                "threads": args.threads,
                "train_cells_per_s": timed.summary.train_cells_per_s,
            }
        )
    )


if __name__ == "__main__":
    main()
