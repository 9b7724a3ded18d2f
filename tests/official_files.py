"""Writing small checkpoints in the official layout, for tests that must not need ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from opencellplm.io.official import config_from_official, official_state_dict_from
from opencellplm.module.annotation import build_module


def official_config(n_genes: int = 40, **overrides) -> dict:
    """An official-style config (OmicsFormer kwargs plus training keys), small."""
    return {
        "name": "tiny", "enc_mod": "flowformer", "enc_hid": 16, "enc_layers": 2, "latent_mod": "gmvae", "lamda": 5.0,
        "post_latent_dim": 8, "dec_mod": "nbmlp", "dec_hid": 16, "dec_layers": 2, "model_dropout": 0.2,
        "mask_node_rate": 0.75, "mask_feature_rate": 0.25, "drop_node_rate": 0.3, "norm": "groupnorm",
        "epochs": 200, "lr": 2e-4, "w_li": 5.0, "w_en": 5.0, "num_clusters": 4, "out_dim": n_genes, "cat_pe": False,
        "max_batch_size": 4000, "dae": True, "mask_beta": True, "batch_num": 3, "dataset_num": 2,
        "gene_list": [f"ENSG{i:011d}" for i in range(n_genes)],
    } | overrides  # fmt: skip


def write_official(prefix: Path, raw_config: dict | None = None, state: dict | None = None) -> Path:
    """Write PREFIX.config.json and PREFIX.best.ckpt; random weights unless ``state`` is given."""
    raw_config = raw_config or official_config()
    if state is None:
        torch.manual_seed(0)
        config, _, head = config_from_official(raw_config)
        state = official_state_dict_from(build_module(config, head))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.config.json").write_text(json.dumps(raw_config))
    torch.save({"model_state_dict": state, "epoch": 3}, f"{prefix}.best.ckpt")
    return prefix
