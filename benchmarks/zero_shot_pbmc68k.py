"""Zero-shot clustering on PBMC 68k reduced (``bulk_labels``): the shipped model, the same architecture
untrained, and the PCA baseline, clustered and scored by the same procedure.

Usage: python benchmarks/zero_shot_pbmc68k.py [--model cellplm-small] [--seeds 0 1 2]

Procedure, the same for every representation (:func:`opencellplm.metrics.clustering_scores`): 15-nearest-
neighbour graph (scanpy), Leiden at resolutions 0.1, 0.2, ..., 1.4 (the CellPLM paper's sweep); ARI and NMI
against ``obs['cell_type']`` (types assigned by correlation with bulk-sorted references). Three figures per
representation:

- best over resolutions: the best ARI and the best NMI, each taken independently over the sweep (the official
  protocol; optimistic);
- fixed resolution 1.0 (label-free);
- the resolution chosen by NMI, with the ARI at that same resolution (as scib does).

The PCA baseline is :func:`opencellplm.baselines.pca_embedding` (log-normalised counts, highly variable genes,
scaled, 50 components). Each figure is the mean (and spread) over Leiden seeds. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings

import numpy as np
import torch

from opencellplm import CellPLM, CellPLMModule, datasets
from opencellplm.baselines import pca_embedding
from opencellplm.metrics import DEFAULT_RESOLUTIONS, clustering_scores

FIXED_RESOLUTION = 1.0


def scores(representation: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    result = clustering_scores(representation, labels, fixed_resolution=FIXED_RESOLUTION, n_neighbors=15, seed=seed)
    return {
        "best_ari (best over resolutions)": result.best_ari,
        "best_nmi (best over resolutions)": result.best_nmi,
        f"ari_at_{FIXED_RESOLUTION}": result.ari_fixed,
        f"nmi_at_{FIXED_RESOLUTION}": result.nmi_fixed,
        "nmi_chosen_resolution": result.nmi_chosen_resolution,
        "ari_at_nmi_chosen_resolution": result.ari_at_nmi_choice,
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
    untrained = CellPLM(CellPLMModule(trained.config), trained.genes, meta={"gene_id_rule": trained.gene_id_rule})

    pca = pca_embedding(adata, n_comps=50, seed=0)
    representations = {
        f"{args.model} (pretrained)": trained.get_latent_representation(adata),
        f"{args.model} architecture, untrained": untrained.get_latent_representation(adata),
        f"PCA of log-normalised highly variable genes, scaled ({pca.params['n_comps']} PCs, "
        f"{pca.params['n_top_genes']} genes)": pca.prediction,
    }
    results = {}
    for name, rep in representations.items():
        per_seed = [scores(rep, labels, seed) for seed in args.seeds]
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
                "resolutions": list(DEFAULT_RESOLUTIONS),
                "fixed_resolution": FIXED_RESOLUTION,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
