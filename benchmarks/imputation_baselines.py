"""Spatial imputation baselines on real data (TASKS §5): held-out spatial genes predicted from an scRNA-seq
reference by the reference mean and the SpaGE-style mapping. No CellPLM involved: a sanity check of the baselines.

Usage: python benchmarks/imputation_baselines.py [--datasets bdtnp merfish] [--seed 0] [--n-pv 30] [--k 50]

- ``bdtnp``: the BDTNP atlas (3,039 locations x 84 genes, normalised in-situ intensities taken as they are: the
  size-factor rule needs non-negative values, not counts) against the Drosophila Drop-seq reference (shipped as
  log2(1 + x); ``2**v - 1`` gives x back). The 84 genes in a stratified 10-fold hold-out (Li et al. 2022): each
  fold's genes are predicted from the other 74.
- ``merfish``: MERFISH U-2 OS, spatial = ``sample_1`` (645 cells), reference = ``sample_2`` + ``sample_3``
  (723 cells), all 12,903 genes in both. 5 folds of up to 25 genes per zero-rate bin (the official protocol's
  bins, zero rates of the spatial cells) among the genes with a count in both; each fold's genes are predicted
  from all the other genes.

Scores per held-out gene on log1p values (Pearson r, cosine similarity, RMSE), averaged over the fold's genes;
the tables give mean ± sd over folds, and the wall time per fold. Then the scores per zero-rate bin, pooling
the genes of all folds.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from opencellplm import datasets
from opencellplm.baselines import reference_mean, spage_style
from opencellplm.metrics import held_out_gene_folds, imputation_scores, zero_rates


def bdtnp_pair():
    spatial = datasets.bdtnp_atlas()
    reference = datasets.drosophila_scrnaseq()
    x = sp.csr_matrix(reference.X, dtype=np.float64, copy=True)
    x.data = np.exp2(x.data) - 1.0  # shipped as log2(1 + x)
    reference.X = x.astype(np.float32)
    candidates = np.arange(spatial.n_vars)
    return spatial, reference, candidates, {"n_folds": 10, "max_per_bin": None}


def merfish_pair():
    adata = datasets.merfish_u2os()
    samples = adata.obs["sample"].astype(str).to_numpy()
    spatial = adata[samples == "sample_1"].copy()
    reference = adata[samples != "sample_1"].copy()
    expressed = (spatial.X.getnnz(axis=0) > 0) & (reference.X.getnnz(axis=0) > 0)
    return spatial, reference, np.flatnonzero(expressed), {"n_folds": 5, "max_per_bin": 25}


PAIRS = {"bdtnp": bdtnp_pair, "merfish": merfish_pair}


def run(name: str, args) -> None:
    spatial, reference, candidates, protocol = PAIRS[name]()
    rates = zero_rates(spatial.X[:, candidates])
    folds = held_out_gene_folds(rates, seed=args.seed, **protocol)
    methods = {
        "reference_mean": lambda genes: reference_mean(spatial, reference, genes),
        "spage_style": lambda genes: spage_style(spatial, reference, genes, n_pv=args.n_pv, k=args.k, seed=args.seed),
    }
    rows, per_gene = [], []
    start = time.perf_counter()
    for f, fold in enumerate(folds):
        genes = list(spatial.var_names[candidates[fold]])
        truth = spatial[:, genes].X
        for method, call in methods.items():
            result = call(genes)
            scores = imputation_scores(truth, result.prediction, genes=genes)
            extra = {k: result.params[k] for k in ("n_pv", "n_pv_effective") if k in result.params}
            rows.append({"method": method, "fold": f, **scores.to_dict(), "seconds": result.seconds, **extra})
            per_gene.append(scores.per_gene.assign(method=method, fold=f))
    table = pd.DataFrame(rows)
    print(
        f"\n{name}: spatial {spatial.n_obs} cells x {spatial.n_vars} genes, reference {reference.n_obs} cells x "
        f"{reference.n_vars} genes; {len(folds)} folds of {sorted({len(f) for f in folds})} held-out genes "
        f"(max_per_bin={protocol['max_per_bin']}, seed {args.seed}); {time.perf_counter() - start:.0f} s in all"
    )
    print("| method | Pearson r | cosine | RMSE (log1p) | undefined Pearson (genes) | seconds per fold |")
    print("|---|---|---|---|---|---|")
    for method, group in table.groupby("method", sort=False):
        cells = [f"{group[m].mean():.3f} ± {group[m].std():.3f}" for m in ("pearson", "cosine", "rmse")]
        print(
            f"| {method} | " + " | ".join(cells) + f" | {int(group['n_undefined_pearson'].sum())} | "
            f"{group['seconds'].mean():.2f} ± {group['seconds'].std():.2f} |"
        )
    if "n_pv_effective" in table:
        spage = table[table["method"] == "spage_style"]
        kept = [int(n) for n in spage["n_pv_effective"]]
        print(f"spage_style principal vectors: n_pv {int(spage['n_pv'].iloc[0])}, kept per fold {kept}")
    genes = pd.concat(per_gene)
    by_bin = genes.groupby(["method", "bin"], observed=True)[["pearson", "cosine", "rmse"]].mean()
    by_bin["n_genes"] = genes.groupby(["method", "bin"], observed=True).size()
    print("\nper zero-rate bin (genes of all folds pooled):")
    print(by_bin.round(3).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and of SpaGE's PCAs")
    parser.add_argument("--n-pv", type=int, default=30, help="principal vectors of spage_style")
    parser.add_argument("--k", type=int, default=50, help="neighbours of spage_style")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in args.datasets:
        run(name, args)


if __name__ == "__main__":
    main()
