"""Streaming benchmark: embed a backed h5ad far larger than one cell set, report peak RSS and cells/s.

Usage:
    python benchmarks/stream_embed.py [--cells 1000000] [--genes 2000] [--density 0.07] [--dir DIR]

Writes a synthetic h5ad (raw counts, CSR, written in blocks so the writer's memory stays small)
unless it already exists in DIR, builds a small random CellPLM (hidden 128, 2 layers, latent 32)
whose vocabulary is the file's genes, and embeds the file read with ``backed="r"`` in a fresh
process, so that its peak RSS (ru_maxrss) measures the embedding alone. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def write_h5ad(path: Path, n_cells: int, n_genes: int, density: float, block: int = 20_000) -> None:
    import h5py
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import sparse_dataset, write_elem

    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".partial")
    with h5py.File(tmp, "w") as f:
        obs = pd.DataFrame(
            {"sample": pd.Categorical(rng.choice([f"s{i}" for i in range(8)], n_cells))},
            index=pd.Index([f"cell{i}" for i in range(n_cells)]),
        )
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=[f"ENSG{i:011d}" for i in range(n_genes)]))
        for start in range(0, n_cells, block):
            n = min(block, n_cells - start)
            nnz_per_row = rng.binomial(n_genes, density, size=n)
            cols = [np.sort(rng.choice(n_genes, k, replace=False)) for k in nnz_per_row]
            indptr = np.concatenate([[0], np.cumsum(nnz_per_row)])
            values = (1 + rng.geometric(0.45, size=indptr[-1])).astype(np.float32)
            chunk = sp.csr_matrix((values, np.concatenate(cols), indptr), shape=(n, n_genes))
            if start == 0:
                write_elem(f, "X", chunk)
            else:
                sparse_dataset(f["X"]).append(chunk)
    tmp.rename(path)


def embed(path: Path, max_cells: int, threads: int) -> dict:
    import anndata as ad
    import torch

    from opencellplm import CellPLM, CellPLMModule, DecoderConfig, EncoderConfig, LatentConfig, ModelConfig

    torch.set_num_threads(threads)
    adata = ad.read_h5ad(path, backed="r")
    genes = list(adata.var_names)
    config = ModelConfig(
        n_genes=len(genes),
        hidden_dim=128,
        encoder=EncoderConfig(n_layers=2, n_heads=8),
        latent=LatentConfig(dim=32),
        decoder=DecoderConfig(hidden_dim=128),
    )
    torch.manual_seed(0)
    model = CellPLM(CellPLMModule(config), genes)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    embedding = model.get_latent_representation(adata, max_cells=max_cells)  # includes the validation pass
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    validate_start = time.perf_counter()
    report = model.validate(adata)
    validate_s = time.perf_counter() - validate_start
    return {
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "file_gb": round(path.stat().st_size / 1e9, 2),
        "max_cells": max_cells,
        "threads": threads,
        "seconds_total": round(seconds, 1),
        "seconds_validate_pass": round(validate_s, 1),
        "cells_per_s": round(adata.n_obs / seconds),
        "peak_rss_gb": round(peak_gb, 2),
        "rss_before_embedding_gb": round(rss_before / 1024, 2),
        "embedding_finite": bool(report.ok and (embedding == embedding).all()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--density", type=float, default=0.07)
    parser.add_argument("--max-cells", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", default=os.environ.get("TMPDIR", "/tmp"))
    parser.add_argument("--embed-only", metavar="H5AD", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.embed_only:
        print(json.dumps(embed(Path(args.embed_only), args.max_cells, args.threads)))
        return 0
    path = Path(args.dir) / f"stream_{args.cells}x{args.genes}_{args.density}.h5ad"
    if not path.exists():
        start = time.perf_counter()
        write_h5ad(path, args.cells, args.genes, args.density)
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    command = [sys.executable, __file__, "--embed-only", str(path), "--max-cells", str(args.max_cells)]
    return subprocess.call(command + ["--threads", str(args.threads)])


if __name__ == "__main__":
    sys.exit(main())
