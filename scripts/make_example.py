"""Write a small official-format checkpoint (random weights) and a matching h5ad, to try the main job
without downloading the official 85M weights.

Usage: python scripts/make_example.py OUT_DIR
Writes OUT_DIR/tiny.config.json, OUT_DIR/tiny.best.ckpt (official layout) and OUT_DIR/cells.h5ad
(raw counts, Ensembl ids as var_names, two samples in obs['sample']).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from opencellplm import CellPLMModule
from opencellplm.io.official import config_from_official, official_state_dict_from


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="example", help="folder to write (default: example)")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    genes = [f"ENSG{i:011d}" for i in range(500)]
    raw = {  # the shape of the released 85M config, scaled down
        "enc_mod": "flowformer", "enc_hid": 64, "enc_layers": 2, "enc_head": 8, "latent_mod": "gmvae",
        "post_latent_dim": 32, "num_clusters": 16, "lamda": 5.0, "w_li": 5.0, "w_en": 5.0, "dec_mod": "nbmlp",
        "dec_hid": 64, "dec_layers": 2, "out_dim": len(genes), "model_dropout": 0.2, "norm": "groupnorm",
        "cat_pe": False, "batch_num": 4, "dataset_num": 2, "gene_list": genes,
    }  # fmt: skip
    torch.manual_seed(0)
    module = CellPLMModule(config_from_official(raw)[0])
    (out / "tiny.config.json").write_text(json.dumps(raw))
    torch.save({"model_state_dict": official_state_dict_from(module)}, out / "tiny.best.ckpt")

    rng = np.random.default_rng(0)
    n_cells, var_names = 600, genes[50:450] + [f"GENE{i}" for i in range(20)]  # 20 genes outside the vocabulary
    counts = sp.csr_matrix(rng.negative_binomial(1, 0.8, size=(n_cells, len(var_names))).astype(np.float32))
    obs = pd.DataFrame({"sample": rng.choice(["donor_a", "donor_b"], n_cells)}, index=[f"c{i}" for i in range(n_cells)])
    ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=var_names)).write_h5ad(out / "cells.h5ad")
    sys.stdout.write(f"wrote {out}/tiny.config.json, {out}/tiny.best.ckpt and {out}/cells.h5ad\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
