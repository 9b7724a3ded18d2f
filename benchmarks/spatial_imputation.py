"""Spatial imputation on real data: held-out spatial genes predicted by CellPLM (fine-tuned with the coordinates
encoded in spatial tiles, without the encoding, as the official pipeline with consecutive chunks, and from
scratch) and by the baselines, on the same folds (TASKS §5).

Usage: python benchmarks/spatial_imputation.py [--datasets bdtnp merfish] [--model cellplm-small]
                                               [--folds 5] [--steps 150] [--variants ...] [--json OUT.json]

- ``bdtnp``: the BDTNP atlas (3,039 locations x 84 genes, 3-D coordinates) with the Drosophila embryo Drop-seq
  reference (1,297 cells x 8,924 genes). Neither ships counts: the atlas's normalised intensities enter as pseudo
  counts ``rint(100 * intensity)``, the reference's ``log2(1 + scaled counts)`` as ``rint((2**v - 1) /
  (2**v_min - 1))`` per cell (see :mod:`opencellplm.data.pseudocounts`). Fly gene ids are prefixed ``dmel:`` and
  added to the vocabulary with fresh rows, so that no fly gene borrows a human gene's row by a shared symbol.
  Genes are dealt into ``--folds`` folds stratified by zero rate, every gene held out once (Li et al. 2022).
- ``merfish``: MERFISH U-2 OS: sample_1 is the spatial data (2-D coordinates), samples 2 and 3 the reference; up
  to 25 genes per zero-rate bin held out per fold, among the 2,000 most variable genes of the reference samples
  (a panel of 2,000 genes, which keeps a CPU run short). Caveat: the shipped cellplm-small saw all three MERFISH
  samples (every gene) in pretraining, so its pretrained rows are optimistic here; the from-scratch row is not.

The reference input keeps the panel, the held-out genes and the most variable others, up to
``--max-reference-genes`` (2,000). Prints per data set the mean ± sd over folds of Pearson r, cosine similarity
and RMSE (per held-out gene on log1p values, averaged over genes), with fit / predict seconds and peak memory,
then optionally writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings

import anndata as ad
import pandas as pd

from opencellplm.benchmark.tasks import bdtnp_pair, merfish_pair
from opencellplm.tasks.imputation import DEFAULT_VARIANTS, VARIANTS, ImputationRecipe, SpatialImputer


def bdtnp() -> tuple[ad.AnnData, ad.AnnData, str, int | None]:
    data = bdtnp_pair()
    return data["spatial"], data["reference"], data["values"], data["max_per_bin"]


def merfish() -> tuple[ad.AnnData, ad.AnnData, str, int | None]:
    data = merfish_pair()
    return data["spatial"], data["reference"], data["values"], data["max_per_bin"]


#: Per data set: the largest cell set (MERFISH's 645 spatial cells then form two tiles, one held out for validation)
#: and the obs column of the reference's samples (MERFISH: the reference samples, as the official validation).
SETTINGS = {
    "bdtnp": {"max_cells": None, "reference_sample_key": None},
    "merfish": {"max_cells": 350, "reference_sample_key": "sample"},
}


PAIRS = {"bdtnp": bdtnp, "merfish": merfish}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--model", default="cellplm-small")
    parser.add_argument("--folds", type=int, default=5, help="number of gene folds (all are scored)")
    parser.add_argument("--only-folds", type=int, nargs="+", help="score only these folds (default: all)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--max-cells", type=int, help="largest cell set (default: 1000 for bdtnp, 350 for merfish)")
    parser.add_argument(
        "--max-reference-genes", type=int, default=2000, help="reference genes kept (panel, targets, most variable)"
    )
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--baselines", nargs="+", default=["reference_mean", "spage_style"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write every fold's scores here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)

    report = {}
    for name in args.datasets:
        spatial, reference, values, max_per_bin = PAIRS[name]()
        max_cells = args.max_cells or SETTINGS[name]["max_cells"] or 1000
        recipe = ImputationRecipe(
            steps=args.steps, max_cells=max_cells, max_reference_genes=args.max_reference_genes, seed=args.seed
        )
        imputer = SpatialImputer.from_pretrained(args.model, recipe=recipe)
        tic = time.perf_counter()
        result = imputer.score(
            spatial,
            reference,
            n_folds=args.folds,
            max_per_bin=max_per_bin,
            folds=args.only_folds,
            seed=args.seed,
            variants=args.variants,
            baselines=args.baselines,
            values=values,
            extend_vocabulary=name == "bdtnp",
            reference_sample_key=SETTINGS[name]["reference_sample_key"],
        )
        seconds = time.perf_counter() - tic
        table = result.to_frame()
        n_genes = sum(len(result.folds[f]) for f in result.scored_folds)
        print(
            f"\n{name}: {spatial.n_obs} spatial cells x {spatial.n_vars} genes, reference {reference.n_obs} x "
            f"{reference.n_vars}; {len(result.scored_folds)} folds, {n_genes} held-out genes in all; values: {values}; "
            f"seed {args.seed}, {args.steps} steps; {seconds / 60:.1f} min"
        )
        print("| method | Pearson r | cosine | RMSE | fit s | predict s | peak MB |")
        print("|---|---|---|---|---|---|---|")
        for method, row in table.iterrows():
            cells = [f"{row[m]:.3f} ± {row[f'{m}_std']:.3f}" for m in ("pearson", "cosine", "rmse")]
            fit = "" if pd.isna(row["fit_seconds"]) else f"{row['fit_seconds']:.0f}"
            print(
                f"| {method} | "
                + " | ".join(cells)
                + f" | {fit} | {row['predict_seconds']:.1f} | {row['peak_memory_mb']:.0f} |"
            )
        if result.skipped:
            print(f"skipped: {result.skipped}")
        report[name] = result.to_dict()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
