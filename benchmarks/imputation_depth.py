"""Is spatial imputation's level error the depth at which the model reads the spatial panel?

Usage: python benchmarks/imputation_depth.py [--model cellplm-small] [--seed 0] [--fold 0]

On BDTNP (the benchmark's pseudo counts, every fly gene added to the vocabulary), one fold of held-out spatial genes
(the benchmark's folds, stratified by zero rate) is imputed by a fine-tuned CellPLM twice: with the spatial counts as
they are, and with them scaled so that the median cell's panel total matches the median reference cell's total over
the same genes (rounded; the predictions are scaled back). The encoder reads log1p of the counts, so depth enters
the latent; the predictions are rescaled to each cell's observed panel total either way. Prints, per held-out gene
on log1p values and averaged: RMSE, the level gap (mean prediction minus mean truth) and Pearson r, beside the
reference's mean profile.
"""

from __future__ import annotations

import argparse
import logging
import warnings

import numpy as np
import scipy.sparse as sp

from opencellplm import CellPLM
from opencellplm.baselines.imputation import reference_mean
from opencellplm.benchmark.tasks import bdtnp_pair
from opencellplm.metrics.imputation import held_out_gene_folds, zero_rates
from opencellplm.tasks.imputation import ImputationRecipe, SpatialImputer


def _dense(matrix) -> np.ndarray:
    return np.asarray(matrix.todense() if sp.issparse(matrix) else matrix, dtype=np.float64)


def _scores(prediction: np.ndarray, truth: np.ndarray) -> str:
    lx, lt = np.log1p(prediction), np.log1p(truth)
    rmse = np.sqrt(((lx - lt) ** 2).mean(0)).mean()
    gap = (lx.mean(0) - lt.mean(0)).mean()
    r = np.nanmean([np.corrcoef(lx[:, j], lt[:, j])[0, 1] for j in range(lx.shape[1])])
    return f"RMSE {rmse:.3f}  level gap {gap:+.3f}  per-gene r {r:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cellplm-small")
    parser.add_argument("--seed", type=int, default=0, help="fine-tuning seed and the folds' seed")
    parser.add_argument("--fold", type=int, default=0, help="which of the 5 folds is held out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)

    pair = bdtnp_pair()
    spatial, reference = pair["spatial"], pair["reference"]
    shared = [g for g in spatial.var_names if g in set(reference.var_names)]
    folds = held_out_gene_folds(zero_rates(spatial[:, shared].X), n_folds=5, seed=args.seed)
    genes = [shared[i] for i in folds[args.fold]]
    panel = spatial[:, [g for g in spatial.var_names if g not in set(genes)]].copy()
    panel_in_reference = [g for g in panel.var_names if g in set(reference.var_names)]
    reference_totals = _dense(reference[:, panel_in_reference].X).sum(1)
    scale = np.median(reference_totals[reference_totals > 0]) / np.median(_dense(panel.X).sum(1))
    truth = _dense(spatial[:, genes].X)
    print(
        f"{len(genes)} held-out genes; median panel total: spatial {np.median(_dense(panel.X).sum(1)):.0f}, "
        f"reference {np.median(reference_totals[reference_totals > 0]):.0f} (scale {scale:.4f})"
    )
    print(f"{'reference mean profile':40s} {_scores(reference_mean(panel, reference, genes).prediction, truth)}")
    for label, factor in (("as they are", 1.0), ("scaled to the reference's depth", scale)):
        work = panel.copy()
        if factor != 1.0:
            work.X = sp.csr_matrix(np.rint(_dense(panel.X) * factor).astype(np.float32))
        recipe = ImputationRecipe(steps=150, max_cells=1000, max_reference_genes=2000, seed=args.seed)
        imputer = SpatialImputer.from_pretrained(CellPLM.from_pretrained(args.model), recipe=recipe)
        imputer.fit(work, reference, extend_vocabulary=True, genes=genes)
        imputed = imputer.impute(work, genes)  # on the scale of the counts given
        print(f"{'fine-tuned, spatial counts ' + label:40s} {_scores(imputed.to_numpy(np.float64) / factor, truth)}")


if __name__ == "__main__":
    main()
