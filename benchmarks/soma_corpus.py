"""How long a pretraining corpus takes to build from a local TileDB-SOMA experiment, beside the same corpus built
from the h5ad files the experiment was made of (simulated counts; both in this run, one after the other).

    python benchmarks/soma_corpus.py --cells 100000 --work /tmp/soma_bench

The experiment is built once in ``--work`` (with ``tiledbsoma.io``, timed apart) and kept for later runs. Each data
set measures its own ``--genes`` of a ``--union`` of genes, with ``--nnz`` counts per cell; cells are split among
donors. Prints the seconds of each step and cells per second, and the time 1M cells would take at that rate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def simulated_files(work: Path, cells: int, datasets: int, genes: int, union: int, nnz: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for d in range(datasets):
        n = cells // datasets + (d < cells % datasets)
        measured = np.sort(rng.choice(union, genes, replace=False))
        indptr = np.arange(n + 1, dtype=np.int64) * nnz
        # nnz distinct genes per cell: a random window of a random permutation of the data set's genes
        order = rng.permutation(genes)
        starts = rng.integers(0, genes - nnz + 1, n)
        indices = np.sort(order[starts[:, None] + np.arange(nnz)], axis=1).ravel().astype(np.int32)
        data = rng.geometric(0.4, n * nnz).astype(np.float32)
        X = sp.csr_matrix((data, indices, indptr), shape=(n, genes))
        names = [f"GENE{g:05d}" for g in measured]
        adata = ad.AnnData(
            X,
            obs=pd.DataFrame(
                {"dataset_id": f"ds{d:02d}", "donor": rng.choice([f"ds{d:02d}-donor{k}" for k in range(4)], n)},
                index=[f"ds{d:02d}-{i}" for i in range(n)],
            ),
            var=pd.DataFrame({"feature_name": names}, index=names),
        )
        paths.append(work / f"ds{d:02d}.h5ad")
        adata.write_h5ad(paths[-1])
    return paths


def build_experiment(uri: str, paths: list[Path]) -> None:
    import tiledbsoma.io

    tiledbsoma.io.from_h5ad(uri, str(paths[0]), measurement_name="RNA", X_layer_name="raw")
    for path in paths[1:]:
        registration = tiledbsoma.io.register_h5ads(
            uri, [str(path)], measurement_name="RNA", obs_field_name="obs_id", var_field_name="var_id"
        )
        registration.prepare_experiment(uri)
        tiledbsoma.io.from_h5ad(
            uri, str(path), measurement_name="RNA", X_layer_name="raw", registration_mapping=registration
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--datasets", type=int, default=10)
    parser.add_argument("--genes", type=int, default=3000, help="genes each data set measures")
    parser.add_argument("--union", type=int, default=8000, help="genes of all data sets together")
    parser.add_argument("--nnz", type=int, default=1000, help="counts (non-zero genes) per cell")
    parser.add_argument("--block-cells", type=int, default=20_000)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--skip-h5ad", action="store_true", help="time only the SOMA corpus")
    args = parser.parse_args()

    from opencellplm.data.corpus import prepare_corpus
    from opencellplm.data.soma import prepare_corpus_from_soma

    args.work.mkdir(parents=True, exist_ok=True)
    uri = str(args.work / "experiment")
    settings = {"sample_key": "donor", "max_cells": 4000, "shard_cells": 100_000}
    figures = {"cells": args.cells, "datasets": args.datasets, "genes": args.genes, "nnz_per_cell": args.nnz}
    paths = sorted(args.work.glob("ds*.h5ad"))
    if not Path(uri).exists():
        start = time.perf_counter()
        paths = simulated_files(args.work, args.cells, args.datasets, args.genes, args.union, args.nnz, seed=0)
        figures["simulate_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        build_experiment(uri, paths)
        figures["ingest_s"] = round(time.perf_counter() - start, 1)
    for name in ("corpus_soma", "corpus_h5ad"):
        shutil.rmtree(args.work / name, ignore_errors=True)
    start = time.perf_counter()
    prepare_corpus_from_soma(
        uri, args.work / "corpus_soma", dataset_key="dataset_id", block_cells=args.block_cells, **settings
    )
    figures["soma_s"] = round(time.perf_counter() - start, 1)
    if not args.skip_h5ad:
        start = time.perf_counter()
        prepare_corpus(paths, args.work / "corpus_h5ad", **settings)
        figures["h5ad_s"] = round(time.perf_counter() - start, 1)
    for source in ("soma", "h5ad"):
        if f"{source}_s" in figures:
            rate = args.cells / figures[f"{source}_s"]
            figures[f"{source}_cells_per_s"] = round(rate)
            figures[f"{source}_1M_cells_min"] = round(1e6 / rate / 60, 1)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
