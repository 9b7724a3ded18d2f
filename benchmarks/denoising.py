"""Denoising on real count data: CellPLM zero-shot, fine-tuned and from scratch, beside the baselines, on the
same corrupted matrix, by both protocols of TASKS §3.

Usage: python benchmarks/denoising.py [--datasets pbmc3k mouse_10k_subset] [--model cellplm-small]
                                      [--seeds 0 1 2] [--steps 200] [--protocols hidden mcv]

``hidden``: 10% of each cell's non-zero counts hidden (seeded), RMSE / MAE on log1p of counts normalised to
1e4 per cell, at the hidden entries only. ``mcv``: molecular cross-validation (each molecule to the denoised
part with probability 0.9), MSE of log-normalised values and Poisson loss against the held-out part. Only
genes in the model's vocabulary are scored (every method sees those alone). Prints, per data set and
protocol, mean ± sd over seeds as Markdown tables, then one JSON document.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings

import pandas as pd

from opencellplm import datasets
from opencellplm.tasks import Denoiser, DenoisingRecipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["pbmc3k", "mouse_10k_subset"])
    parser.add_argument("--model", default="cellplm-small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--protocols", nargs="+", default=["hidden", "mcv"], choices=["hidden", "mcv"])
    parser.add_argument("--max-cells-data", type=int, default=3000, help="use at most this many cells of a data set")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)

    report = {}
    for name in args.datasets:
        adata = datasets.load_dataset(name)
        if adata.n_obs > args.max_cells_data:  # a seeded subset keeps the CPU run short
            adata = adata[
                pd.Series(range(adata.n_obs)).sample(args.max_cells_data, random_state=0).sort_values()
            ].copy()
        for protocol in args.protocols:
            frames = []
            for seed in args.seeds:
                denoiser = Denoiser.from_pretrained(args.model, recipe=DenoisingRecipe(steps=args.steps, seed=seed))
                result = denoiser.score(
                    adata,
                    protocol=protocol,
                    seed=seed,
                    fine_tune=True,
                    from_scratch=True,
                    baselines=("unchanged", "knn_smoothing", "magic", "scvi"),
                )
                frames.append(result.to_frame().assign(seed=seed))
                skipped = result.skipped
            table = pd.concat(frames)
            metrics = [c for c in table.columns if c not in ("seed", "seconds", "fit_seconds", "predict_seconds")]
            summary = table.groupby(level=0, sort=False)[[*metrics, "seconds"]].agg(["mean", "std"])
            print(f"\n{name} ({adata.n_obs} cells x {adata.n_vars} genes), protocol {protocol}, seeds {args.seeds}")
            print("| method | " + " | ".join(metrics) + " | seconds |")
            print("|---" * (len(metrics) + 2) + "|")
            for method, row in summary.iterrows():
                cells = [f"{row[(m, 'mean')]:.3f} ± {row[(m, 'std')]:.3f}" for m in metrics]
                print(f"| {method} | " + " | ".join(cells) + f" | {row[('seconds', 'mean')]:.1f} |")
            if skipped:
                print(f"skipped: {skipped}")
            report[f"{name}/{protocol}"] = table.reset_index().to_dict(orient="records")
    print(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
