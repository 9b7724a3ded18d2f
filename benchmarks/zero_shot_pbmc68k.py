"""Zero-shot clustering on PBMC 68k reduced (``bulk_labels``): the shipped model, the same architecture
untrained, and PCA of log-normalised counts, clustered by the same procedure.

Usage: python benchmarks/zero_shot_pbmc68k.py [--model cellplm-small] [--seeds 0 1 2]
(needs the ``benchmark`` extra: leidenalg and igraph)

Procedure, the same for every representation: 15-nearest-neighbour graph (scanpy), Leiden at
resolutions 0.1, 0.2, ..., 1.4 (as the CellPLM paper's sweep) and at 1.0; ARI and NMI against
``obs['cell_type']`` (the bulk-sorted labels). The sweep reports the best value over resolutions;
each figure is the mean (and spread) over Leiden seeds. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings

import numpy as np
import scanpy as sc
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from opencellplm import CellPLM, CellPLMModule, datasets

RESOLUTIONS = [round(0.1 * i, 1) for i in range(1, 15)]
FIXED_RESOLUTION = 1.0


def scores(adata, representation: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    view = sc.AnnData(np.zeros((adata.n_obs, 1), dtype=np.float32), obs=adata.obs[[]].copy())
    view.obsm["rep"] = representation
    sc.pp.neighbors(view, n_neighbors=15, use_rep="rep", random_state=seed)
    ari, nmi = {}, {}
    for resolution in sorted(set(RESOLUTIONS) | {FIXED_RESOLUTION}):
        sc.tl.leiden(view, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2, key_added="c")
        ari[resolution] = adjusted_rand_score(labels, view.obs["c"])
        nmi[resolution] = normalized_mutual_info_score(labels, view.obs["c"])
    return {
        "best_ari": max(ari.values()),
        "best_nmi": max(nmi.values()),
        "ari_at_1.0": ari[FIXED_RESOLUTION],
        "nmi_at_1.0": nmi[FIXED_RESOLUTION],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cellplm-small", help="shipped model name or checkpoint directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)

    adata = datasets.pbmc68k_reduced()
    labels = adata.obs["cell_type"].to_numpy()
    trained = CellPLM.from_pretrained(args.model)
    torch.manual_seed(0)
    untrained = CellPLM(CellPLMModule(trained.config), trained.genes)

    pca = adata.copy()
    sc.pp.normalize_total(pca, target_sum=1e4)
    sc.pp.log1p(pca)
    sc.pp.pca(pca, n_comps=50, random_state=0)
    representations = {
        f"{args.model} (pretrained)": trained.get_latent_representation(adata),
        f"{args.model} architecture, untrained": untrained.get_latent_representation(adata),
        "PCA of log-normalised counts (50 PCs)": pca.obsm["X_pca"],
    }
    results = {}
    for name, rep in representations.items():
        per_seed = [scores(adata, rep, labels, seed) for seed in args.seeds]
        results[name] = {
            key: {"mean": round(float(np.mean([s[key] for s in per_seed])), 4),
                  "std": round(float(np.std([s[key] for s in per_seed])), 4)}
            for key in per_seed[0]
        }  # fmt: skip
    alignment = trained.validate(adata).alignment
    print(
        json.dumps(
            {
                "data": f"pbmc68k_reduced: {adata.n_obs} cells x {adata.n_vars} genes, {len(set(labels))} bulk labels",
                "genes_in_model_vocabulary": alignment.n_matched,
                "seeds": args.seeds,
                "resolutions": RESOLUTIONS,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
