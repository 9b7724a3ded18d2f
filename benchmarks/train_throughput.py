"""Training throughput: cells per second of optimizer steps, for a named configuration.

Usage: python benchmarks/train_throughput.py [--config small] [--genes 2000] [--cells-per-set 1000]
                                             [--sets-per-step 4] [--steps 5] [--precision auto]

Builds a synthetic corpus (raw counts, 7% non-zero) in a temporary folder and pretrains the
configuration on it for a few steps in this process; prints one JSON line with the cells/s of the
optimizer steps (validation and checkpoints excluded) after one warm-up step.
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


if __name__ == "__main__":
    main()
