"""Cell type annotation on PBMC 68k reduced (``bulk_labels``, 10 types): fine-tuned CellPLM, the same
architecture trained from scratch, and the baselines of TASKS §4, on the same stratified splits.

Usage: python benchmarks/annotation_pbmc68k.py [--model cellplm-small] [--seeds 0 1 2] [--steps 300]
                                               [--mode inductive|transductive]

For each seed: a stratified 80/20 split of the cells (seeded); CellPLM fine-tuned from the pretrained model
and from scratch (the official recipe, :class:`opencellplm.tasks.AnnotationRecipe`, with ``--steps`` steps at
most and early stopping on a validation share of the training cells); CellTypist-style logistic regression,
L1 logistic regression with C by 5-fold CV, and kNN on PCA, trained on the same training cells. Scores on the
test cells: macro F1, macro precision, accuracy, and each method's fit seconds. Prints the mean and spread over
seeds as a Markdown table, then one JSON document.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from opencellplm import datasets
from opencellplm.tasks import AnnotationRecipe, CellTypeAnnotator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cellplm-small", help="shipped model name or checkpoint directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--mode", default="inductive", choices=["inductive", "transductive"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)

    adata = datasets.pbmc68k_reduced()
    rows = []
    for seed in args.seeds:
        train, _ = train_test_split(
            np.arange(adata.n_obs), test_size=0.2, stratify=adata.obs["cell_type"], random_state=seed
        )
        train_cells = np.zeros(adata.n_obs, dtype=bool)
        train_cells[train] = True
        recipe = AnnotationRecipe(steps=args.steps, seed=seed)
        for pretrained in (True, False):
            make = CellTypeAnnotator.from_pretrained if pretrained else CellTypeAnnotator.from_scratch
            annotator = make(args.model, recipe=recipe).fit(adata, "cell_type", mode=args.mode, train_cells=train_cells)
            baselines = ("celltypist_style", "l1_logistic_cv", "knn_on_pca") if pretrained else ()
            scores = annotator.score(adata, "cell_type", test_cells=~train_cells, baselines=baselines, seed=seed)
            frame = scores.to_frame().reset_index(names="method")
            frame["seed"], frame["steps"] = seed, annotator.summary.steps
            frame["train_cells_per_s"] = annotator.summary.train_cells_per_s
            rows.append(frame)
    table = pd.concat(rows)
    summary = table.groupby("method")[["macro_f1", "macro_precision", "accuracy", "fit_seconds"]].agg(["mean", "std"])
    print(f"PBMC 68k reduced, {args.mode}, stratified 80/20 splits, seeds {args.seeds}, up to {args.steps} steps")
    print("| method | macro F1 | macro precision | accuracy | fit seconds |")
    print("|---|---|---|---|---|")
    for method, row in summary.iterrows():
        cells = [f"{row[(m, 'mean')]:.3f} ± {row[(m, 'std')]:.3f}" for m in ("macro_f1", "macro_precision", "accuracy")]
        print(f"| {method} | " + " | ".join(cells) + f" | {row[('fit_seconds', 'mean')]:.1f} |")
    print(json.dumps({"per_seed": table.to_dict(orient="records")}, indent=1, default=float))


if __name__ == "__main__":
    main()
