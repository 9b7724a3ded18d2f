"""Perturbation prediction benchmark: the shipped CellPLM fine-tuned vs the baselines, on SIMULATED Perturb-seq data.

Real Perturb-seq data (Adamson, Norman) cannot be had here, so the data come from the package's simulator
(:func:`opencellplm.datasets.simulate_perturbseq`: a random gene-regulatory network drives NB counts; knock-downs
propagate through it), with a seeded sample of the shipped model's vocabulary as gene names so that every
perturbed gene has a pretrained embedding row. The random network is unrelated to those genes' biology: the
pretrained embeddings carry no knowledge of the simulated regulation. Every line printed says "simulated".

Per seed: a GEARS-style split (unseen single genes; combinations with 0, 1, 2 genes seen alone), CellPLM
fine-tuned on the training perturbations from the shipped weights (and, with --from-scratch, the same architecture
from fresh weights), the baselines (no change, training mean, additive, linear) on the same split; the five
metrics per group, mean +- std over seeds; fit / predict wall time and the rise of resident memory per method.

``--smoke`` instead fits and predicts on the real immune control / stimulated pair (198 cells x 99 genes): the
stimulus is not a gene, so it enters as a new vocabulary entry with a fresh embedding row (extend_vocabulary);
with a single condition there is no held-out perturbation, so it only checks that fit and predict run end to end
and reports the in-sample error beside "no change".

    python benchmarks/perturbation.py                      # seeds 0 1 2, shipped model, all baselines
    python benchmarks/perturbation.py --seeds 0 --steps 50 # quicker
    python benchmarks/perturbation.py --smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from opencellplm import CellPLM
from opencellplm.datasets import immune_control_stimulated, simulate_perturbseq
from opencellplm.tasks import PerturbationPredictor, PerturbationRecipe
from opencellplm.tasks.perturbation import METRICS, lognorm_mean

LOWER_IS_BETTER = {"rmse", "rmse_top20"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="cellplm-small", help="model to fine-tune (default cellplm-small)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one split per seed (default 0 1 2)")
    parser.add_argument("--steps", type=int, default=PerturbationRecipe.steps, help="fine-tuning steps at most")
    parser.add_argument("--from-scratch", action="store_true", help="add CellPLM trained from scratch")
    parser.add_argument("--n-genes", type=int, default=500, help="simulated genes (default 500)")
    parser.add_argument("--n-single", type=int, default=60, help="single-gene perturbations (default 60)")
    parser.add_argument("--n-combo", type=int, default=40, help="two-gene combinations (default 40)")
    parser.add_argument("--cells", type=int, default=50, help="cells per perturbation (default 50)")
    parser.add_argument("--n-control", type=int, default=500, help="control cells (default 500)")
    parser.add_argument("--direction", default="down", choices=["down", "up", "mixed"])
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the simulation and the gene sample")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: small matrices)")
    parser.add_argument("--json", help="write the full result here")
    parser.add_argument("--smoke", action="store_true", help="smoke test on the real immune control/stimulated pair")
    return parser.parse_args()


def smoke(args: argparse.Namespace) -> None:
    adata = immune_control_stimulated()
    adata.obs["perturbation"] = adata.obs["condition"].astype(str)
    model = CellPLM.from_pretrained(args.checkpoint)
    recipe = PerturbationRecipe(steps=args.steps, max_cells=32)
    tic = time.perf_counter()
    predictor = PerturbationPredictor.from_pretrained(model, recipe=recipe)
    predictor.fit(adata, control="control", extend_vocabulary=True, allow_low_overlap=True)
    fit_seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    predicted = predictor.predict(["stimulated", "control"])
    predict_seconds = time.perf_counter() - tic
    genes = list(predicted.columns)
    x = adata[:, genes].X
    truth = lognorm_mean(x[(adata.obs["condition"] == "stimulated").to_numpy()])
    control = lognorm_mean(x[(adata.obs["condition"] == "control").to_numpy()])
    rmse = float(np.sqrt(((predicted.loc["stimulated"].to_numpy() - truth) ** 2).mean()))
    rmse_none = float(np.sqrt(((control - truth) ** 2).mean()))
    s = predictor.summary
    print(f"smoke test, REAL data (immune control/stimulated, {adata.n_obs} cells, {len(genes)} genes in vocabulary)")
    print(f"  'stimulated' entered as a fresh vocabulary row; validation: {s.validation}")
    print(f"  fit {fit_seconds:.1f} s ({s.steps} steps, kept {s.kept}), predict {predict_seconds:.2f} s")
    print(f"  in-sample RMSE of the stimulated mean profile: CellPLM {rmse:.4f}, no change {rmse_none:.4f}")
    print("  (one condition, nothing held out: this checks that fit and predict run, not how well they generalise)")


def table_lines(frame: pd.DataFrame) -> list[str]:
    lines = []
    header = f"{'data':<10}{'method':<22}{'group':<15}{'n':>4}  " + "  ".join(f"{m:>22}" for m in METRICS)
    lines.append(header)
    for (method, group), row in frame.iterrows():
        cells = "  ".join(f"{row[m]:>13.4f} +- {row[m + '_std']:.4f}" for m in METRICS)
        lines.append(f"{row['data']:<10}{method:<22}{group:<15}{row['n_perturbations']:>4.0f}  {cells}")
    return lines


def verdict_lines(frame: pd.DataFrame, label: str) -> list[str]:
    lines = []
    methods = list(dict.fromkeys(frame.index.get_level_values("method")))
    ours = [m for m in methods if m.startswith("cellplm")]
    baselines = [m for m in methods if not m.startswith("cellplm")]
    for method in ours:
        for group in dict.fromkeys(frame.index.get_level_values("group")):
            wins, losses = [], []
            for metric in METRICS:
                mine = frame.loc[(method, group), metric]
                for baseline in baselines:
                    if (baseline, group) not in frame.index:
                        continue
                    theirs = frame.loc[(baseline, group), metric]
                    if np.isnan(mine) or np.isnan(theirs):
                        continue
                    better = mine < theirs if metric in LOWER_IS_BETTER else mine > theirs
                    (wins if better else losses).append(f"{baseline}:{metric}")
            lines.append(f"{label}  {method} {group}: beats {len(wins)}, loses {len(losses)}; loses to {losses}")
    return lines


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.smoke:
        smoke(args)
        return
    started = time.perf_counter()
    model = CellPLM.from_pretrained(args.checkpoint)
    rng = np.random.default_rng(args.data_seed)
    genes = sorted(rng.choice(model.genes, args.n_genes, replace=False).tolist())
    adata = simulate_perturbseq(
        args.n_genes,
        n_single=args.n_single,
        n_combo=args.n_combo,
        cells_per_perturbation=args.cells,
        n_control=args.n_control,
        direction=args.direction,
        gene_names=genes,
        seed=args.data_seed,
    )
    recipe = PerturbationRecipe(steps=args.steps)
    predictor = PerturbationPredictor.from_pretrained(model, recipe=recipe)
    result = predictor.score(adata, seeds=args.seeds, from_scratch=args.from_scratch)
    frame = result.to_frame()
    label = "simulated" if result.simulated else "REAL"
    print(
        f"{label}: perturbation prediction, {adata.n_obs} cells x {adata.n_vars} genes, direction {args.direction}, "
        f"checkpoint {result.checkpoint.get('name')} ({str(result.checkpoint.get('sha256', ''))[:12]}), "
        f"seeds {result.seeds}, steps {args.steps}; metrics: mean +- std over seeds of the per-seed group means"
    )
    for line in table_lines(frame):
        print(line)
    print(f"{label}: timings per method (mean over seeds; baselines are one call, timed as fit)")
    timing = (
        frame.reset_index()
        .groupby("method", sort=False, observed=True)[
            ["fit_seconds", "predict_seconds", "peak_rss_increase_mb", "peak_gpu_mb"]
        ]
        .first()
    )
    for method, row in timing.iterrows():
        predict = "-" if pd.isna(row["predict_seconds"]) else f"{row['predict_seconds']:.2f}"
        print(
            f"{label}  {method:<22} fit {row['fit_seconds']:8.2f} s  predict {predict:>7} s  "
            f"peak RSS rise {row['peak_rss_increase_mb']:7.1f} MB"
        )
    for seed, fits in result.fits.items():
        for name, fit in fits.items():
            print(
                f"{label}  seed {seed} {name}: val MSE no change {fit['start_val_mse']:.5f} -> best "
                f"{fit['best_val_mse']:.5f} after {fit['steps']} steps, kept {fit['kept']}"
            )
    for line in verdict_lines(frame, label):
        print(line)
    print(f"{label}: total wall time {time.perf_counter() - started:.0f} s ({args.threads} torch thread(s))")
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
