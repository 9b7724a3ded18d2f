"""The host's share of embedding, without a GPU: what ``get_latent_representation`` does around the model (issue 23).

Usage: python benchmarks/host_prep.py [--cells 48082] [--genes 19374] [--per-cell 1356] [--reps 3] [--threads 2]
                                      [--transfer-device cuda] [--json OUT]

On an H100 the 85M configuration embedded 48,082 cells x 19,374 genes in 2.8 s end to end, fp32 and bf16 alike
(``benchmarks/gpu_checks.py``): the host sets the pace. This times that host part on any machine. The data are
``gpu_checks.py``'s (1,356 counted genes per cell, density 0.07, values 1 + Poisson(2)), in memory as CSR; the
model is the 85M configuration's vocabulary with its encoder replaced by a stub that returns zeros (so nothing of
the network is timed; the stub runs on the CPU unless ``--transfer-device`` names a device to move each set's
input to). Reported, median over ``--reps`` runs after a warm-up on 2,000 cells: the whole call, and its phases:

* ``checks and sets``: validating the input against the vocabulary and cutting it into cell sets;
* ``set inputs``: reading each set's rows and genes and building the model's input tensors (``CellSets.iterate``);
* ``rest``: the stub, writing the output rows, the finiteness check, the progress bar.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import numpy as np


def make_adata(n: int, g: int, per_cell: int):
    """``benchmarks/gpu_checks.py``'s synthetic counts."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(g)]
    indptr = np.arange(0, (n + 1) * per_cell, per_cell, dtype=np.int64)
    idx = np.sort(rng.integers(0, g, size=(n, per_cell)).astype(np.int32), axis=1).ravel()
    x = sp.csr_matrix((rng.poisson(2.0, n * per_cell).astype(np.float32) + 1, idx, indptr), shape=(n, g))
    x.sum_duplicates()
    adata = ad.AnnData(x)
    adata.var_names = genes
    return adata


def stub_model(genes: list[str], device: str | None):
    """The 85M configuration's vocabulary and latent size around a tiny module whose ``encode`` returns zeros."""
    import torch

    from opencellplm import CellPLM, CellPLMModule, ModelConfig, configs

    model_cfg, _ = configs.load("tiny")
    model_cfg = {k: v for k, v in model_cfg.items() if k != "masking"} | {"n_genes": len(genes)}
    module = CellPLMModule(ModelConfig.from_dict(model_cfg))
    dim = module.config.latent.dim

    def encode(batch, **_):
        n = batch.counts.shape[0]
        if device is not None:  # the transfer a GPU run makes, and its wait
            batch = SimpleNamespace(counts=batch.counts.to(device), gene_index=batch.gene_index.to(device))
            torch.cuda.synchronize()
        return SimpleNamespace(embedding=torch.zeros(n, dim))

    module.encode = encode
    return CellPLM(module, genes)


def timed_call(model, adata) -> dict[str, float]:
    """The call's wall time and the time spent in each phase (wrapping the two methods the call uses)."""
    from opencellplm.data import sets as sets_module
    from opencellplm.model import cellplm as model_module

    spent = {"checks and sets": 0.0, "set inputs": 0.0}
    make_sets, iterate = model_module.CellPLM.cell_sets, sets_module.CellSets.iterate

    def cell_sets(self, *a, **k):
        start = time.perf_counter()
        try:
            return make_sets(self, *a, **k)
        finally:
            spent["checks and sets"] += time.perf_counter() - start

    def timed_iterate(self, *a, **k):
        it = iterate(self, *a, **k)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                spent["set inputs"] += time.perf_counter() - start
                return
            spent["set inputs"] += time.perf_counter() - start
            yield item

    model_module.CellPLM.cell_sets, sets_module.CellSets.iterate = cell_sets, timed_iterate
    try:
        start = time.perf_counter()
        model.get_latent_representation(adata, precision="fp32")
        total = time.perf_counter() - start
    finally:
        model_module.CellPLM.cell_sets, sets_module.CellSets.iterate = make_sets, iterate
    return {"total": total, **spent, "rest": total - sum(spent.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=48082)
    parser.add_argument("--genes", type=int, default=19374)
    parser.add_argument("--per-cell", type=int, default=1356)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--transfer-device", help="move each set's input to this device (e.g. cuda)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    adata = make_adata(args.cells, args.genes, args.per_cell)
    model = stub_model(list(adata.var_names), args.transfer_device)
    model.get_latent_representation(adata[:2000].copy(), precision="fp32")  # warm-up
    runs = [timed_call(model, adata) for _ in range(args.reps)]
    result = {
        "cells": args.cells,
        "genes": args.genes,
        "nnz": int(adata.X.nnz),
        "threads": args.threads,
        "transfer_device": args.transfer_device,
        "seconds": {phase: round(statistics.median(r[phase] for r in runs), 4) for phase in runs[0]},
        "runs_total_s": [round(r["total"], 4) for r in runs],
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
