"""Choose among pretrained checkpoints without the test set: label-free validation, then (for the chosen one) PBMC 68k.

Usage:
    python benchmarks/pretraining_validation.py CKPT [CKPT ...] [--test] [--json OUT]

Validation (every checkpoint): on each real count data set without labels (PBMC 3k, the celltypist sample, a
seeded 2,000-cell subset of the mouse 10k subset), the neighbourhood agreement
(:func:`opencellplm.metrics.neighbourhood_agreement`, 15 neighbours) between the zero-shot embedding and the
standard PCA of log-normalised counts (:func:`opencellplm.baselines.pca_embedding`): does the embedding keep the
cell neighbourhoods of the usual pipeline? These cells may have been seen in pretraining (their labels never
exist). Labelled validation: the class-balanced kNN label agreement (:func:`opencellplm.metrics.knn_label_agreement`)
on the Baron et al. mouse pancreas cells of donor ``mouse2`` (never in any corpus; the recipe's
``--corpus-pancreas other-donor`` trains on donor ``mouse1``), beside PCA's. ``--test`` adds the zero-shot
clustering scores on the held-out sets, PBMC 68k reduced and the Baron human pancreas (use them for the final
choice only), beside PCA, seeds 0-2.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings

import numpy as np

from opencellplm import CellPLM, datasets
from opencellplm.baselines import pca_embedding
from opencellplm.metrics import clustering_scores, knn_label_agreement, neighbourhood_agreement

VALIDATION = {"pbmc3k": None, "celltypist_sample": None, "mouse_10k_subset": 2000}
LABELLED_VALIDATION = "baron_mouse_pancreas"
VALIDATION_DONOR = "mouse2"
TEST = ("pbmc68k_reduced", "baron_human_pancreas")


def validation_sets() -> dict:
    out = {}
    for name, cells in VALIDATION.items():
        adata = datasets.load_dataset(name)
        if cells is not None and adata.n_obs > cells:
            adata = adata[np.sort(np.random.default_rng(0).choice(adata.n_obs, cells, replace=False))].copy()
        out[name] = (adata, pca_embedding(adata, seed=0).prediction)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint directories or shipped model names")
    parser.add_argument("--test", action="store_true", help="also score zero-shot clustering on PBMC 68k (test set)")
    parser.add_argument("--json", help="write the scores here")
    parser.add_argument(
        "--gene-id-rule",
        choices=["exact", "upper"],
        help="override the checkpoints' rule (a run folder of scripts/pretrain_shipped_model.py needs 'upper': its "
        "corpus upper-cased mouse symbols; the installed model records it)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")

    data = validation_sets()
    labelled = datasets.load_dataset(LABELLED_VALIDATION)
    labelled = labelled[(labelled.obs["sample"] == VALIDATION_DONOR).to_numpy()].copy()
    labelled_types = labelled.obs["cell_type"].to_numpy()
    pca_label_agreement = round(knn_label_agreement(pca_embedding(labelled).prediction, labelled_types), 4)
    report = {}
    for checkpoint in args.checkpoints:
        model = CellPLM.from_pretrained(checkpoint)
        if args.gene_id_rule:
            model.meta["gene_id_rule"] = args.gene_id_rule
        scores = {
            name: round(neighbourhood_agreement(model.get_latent_representation(adata), pca), 4)
            for name, (adata, pca) in data.items()
        }
        scores["mean"] = round(float(np.mean(list(scores.values()))), 4)
        report[checkpoint] = {"validation_neighbourhood_agreement": scores}
        model_label_agreement = knn_label_agreement(model.get_latent_representation(labelled), labelled_types)
        report[checkpoint][f"validation_label_agreement_{LABELLED_VALIDATION}_{VALIDATION_DONOR}"] = {
            "model": round(model_label_agreement, 4),
            "pca": pca_label_agreement,
        }
        for test in TEST if args.test else ():
            adata = datasets.load_dataset(test)
            labels = adata.obs["cell_type"].to_numpy()
            representations = {"model": model.get_latent_representation(adata), "pca": pca_embedding(adata).prediction}
            for name, rep in representations.items():
                runs = [clustering_scores(rep, labels, seed=seed) for seed in (0, 1, 2)]
                report[checkpoint][f"{test}_{name}"] = {
                    key: round(float(np.mean([getattr(r, key) for r in runs])), 4)
                    for key in ("best_ari", "best_nmi", "ari_fixed", "nmi_fixed", "ari_at_nmi_choice")
                }
        print(json.dumps({checkpoint: report[checkpoint]}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
