"""Official CellPLM checkpoints (``PREFIX.config.json`` + ``PREFIX.best.ckpt``).

The weights are read with ``torch.load(weights_only=True)``: nothing is ever unpickled beyond
tensors and plain containers. Every official key is mapped to ours by an explicit rule; a missing,
unexpected or mis-shaped key is an error that names it. Three official tensors are dead in the
official forward and are checked, then deliberately left out:

* ``embedder.norm0.*``: a norm layer that is constructed but never called;
* ``embedder.pe_enc.missing_pe``: the positional encoding is disabled in the official code
  (``pe = 0.``), so this random-init vector never reached the model;
* ``embedder.pe_enc.pe_enc.weight``: the fixed sinusoid table; it must equal the table we regenerate.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import (
    AnnotationHeadConfig,
    ConfigError,
    DecoderConfig,
    EncoderConfig,
    LatentConfig,
    ModelConfig,
)
from ..data.genes import gene_list_problems
from ..module import CellPLMModule
from ..module.annotation import AnnotationModule, build_module
from ..nn.norm import make_norm
from ..nn.positional import sinusoid_table
from .errors import CheckpointError, key_mismatches, tensor_problems

logger = logging.getLogger(__name__)

OFFICIAL_PE_GRID = 100  # the official Sinusoidal2dPE is always 100 x 100
PE_TABLE_KEY = "embedder.pe_enc.pe_enc.weight"

# Keyword arguments of the official OmicsFormer that this package understands.
_ARCHITECTURE_KEYS = {
    "gene_list", "enc_mod", "enc_hid", "enc_layers", "post_latent_dim", "dec_mod", "dec_hid", "dec_layers",
    "out_dim", "batch_num", "dataset_num", "platform_num", "mask_type", "model_dropout", "activation", "norm",
    "enc_head", "mask_node_rate", "mask_feature_rate", "drop_node_rate", "max_batch_size", "pe_type", "cat_pe",
    "gene_emb", "latent_mod", "w_li", "w_en", "w_ce", "head_type", "dsbn", "ecs", "dar", "input_covariate",
    "num_clusters", "dae", "lamda", "mask_beta", "cat_dim", "conti_dim", "objective",
}  # fmt: skip
# Keys of the released config that only the (unreleased) training script read.
_TRAINING_KEYS = {
    "name", "dataset", "architecture", "epochs", "lr", "wd", "ddp", "val_num", "beta", "batch_mixing", "batch_flip",
}  # fmt: skip
_REQUIRED_KEYS = ("gene_list", "enc_mod", "enc_hid", "enc_layers", "post_latent_dim", "dec_mod", "dec_hid",
                  "dec_layers", "out_dim")  # fmt: skip


# --------------------------------------------------------------------------------------- config
def config_from_official(raw: dict[str, Any]) -> tuple[ModelConfig, list[str], AnnotationHeadConfig | None]:
    """Translate an official config dictionary into our config, the gene vocabulary and the settings of its
    cell-type head (None unless it is an annotation model: build the module with
    :func:`~opencellplm.module.annotation.build_module`).

    Raises
    ------
    ConfigError
        For unknown keys, missing required keys, or settings this implementation does not
        reproduce (each named, with its value).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"an official config must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _ARCHITECTURE_KEYS - _TRAINING_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) in the official config: {unknown}")
    missing = [k for k in _REQUIRED_KEYS if k not in raw]
    if missing:
        raise ConfigError(f"the official config lacks required key(s): {missing}")
    c = {  # the official OmicsFormer defaults, overridden by the file
        "batch_num": 0, "dataset_num": 0, "platform_num": 0, "mask_type": "input", "model_dropout": 0.1,
        "norm": "layernorm", "enc_head": 8, "mask_node_rate": 0.5, "mask_feature_rate": 0.8, "drop_node_rate": 0.0,
        "max_batch_size": 2000, "pe_type": "sin", "cat_pe": True, "gene_emb": None, "latent_mod": "vae",
        "w_li": 1.0, "w_en": 1.0, "head_type": None, "dsbn": False, "ecs": False, "dar": False,
        "input_covariate": False, "num_clusters": 16, "dae": True, "lamda": 0.5, "mask_beta": False,
    } | raw  # fmt: skip

    def unsupported(key: str, why: str) -> ConfigError:
        return ConfigError(f"official setting {key}={c[key]!r} is not supported: {why}")

    if c["enc_mod"] != "flowformer":
        raise unsupported("enc_mod", "only the Flowformer encoder of the released model is implemented")
    if c["latent_mod"] not in ("gmvae", "ae"):
        raise unsupported("latent_mod", "only 'gmvae' (pretraining) and 'ae' (annotation) are implemented")
    if c["mask_type"] != "input":
        raise unsupported("mask_type", "only input masking is implemented")
    for flag in ("dsbn", "ecs", "dar", "input_covariate"):
        if c[flag]:
            raise unsupported(flag, "this option is not part of the released models")
    if c["pe_type"] is not None and c["pe_type"] not in ("sin", "sinu", "sinusoidal"):
        raise unsupported("pe_type", "only the sinusoidal table can be loaded")
    if c["pe_type"] is not None and c["cat_pe"]:
        raise unsupported("cat_pe", "the official forward crashes with it (torch.cat of a float)")
    if c["gene_emb"] is not None:
        raise unsupported("gene_emb", "pass the embedding through the checkpoint weights instead")
    if c["norm"] not in ("groupnorm", "layernorm", "batchnorm", "rmsnorm"):
        raise unsupported("norm", "the official code silently replaces an unknown norm with Identity")
    head_type = c["head_type"]
    if head_type not in (None, "embedder", "annotation"):
        raise unsupported("head_type", "supported heads are none (NB decoder), 'embedder' and 'annotation'")
    if head_type is None and c["dec_mod"] != "nbmlp":
        raise unsupported("dec_mod", "only the NB decoder ('nbmlp') is implemented")

    genes = list(c["gene_list"])
    if not genes or not all(isinstance(g, str) for g in genes):
        raise ConfigError("the official config's gene_list must be a non-empty list of gene ids")
    problems = gene_list_problems(genes, first_line=0)
    if problems:  # a blank or repeated id would misplace every gene after it
        raise ConfigError("the official config's gene_list: " + "; ".join(problems[:5]).replace("line", "entry"))
    decoder = annotation = None
    if head_type is None:
        if c["out_dim"] != len(genes):
            raise ConfigError(f"out_dim={c['out_dim']} differs from the {len(genes)} genes of gene_list")
        decoder = DecoderConfig(
            hidden_dim=c["dec_hid"],
            n_hidden_layers=c["dec_layers"] - 1,
            n_batches=c["batch_num"],
            n_datasets=c["dataset_num"],
            n_platforms=c["platform_num"],
        )
    elif head_type == "annotation":
        annotation = AnnotationHeadConfig(
            n_classes=c["out_dim"],
            hidden_dim=c["dec_hid"],
            n_hidden_layers=c["dec_layers"] - 1,
            dropout=c["model_dropout"],
        )
    if c["mask_beta"]:
        # OmicsFormer passes mask_beta as MaskBuilder's 5th positional argument, which is
        # `edge_mask`: the Beta-distributed masking was never switched on.
        logger.info("official mask_beta=True never took effect in the official code (its masks were not Beta-drawn)")
    config = ModelConfig(
        n_genes=len(genes),
        hidden_dim=c["enc_hid"],
        dropout=c["model_dropout"],
        norm=c["norm"],
        positional_encoding="none",  # disabled in the official forward
        encoder=EncoderConfig(n_layers=c["enc_layers"], n_heads=c["enc_head"]),
        latent=LatentConfig(
            kind=c["latent_mod"],
            dim=c["post_latent_dim"],
            n_clusters=c["num_clusters"],
            loss_floor=float(c["lamda"]),
            gaussian_weight=float(c["w_li"]),
            categorical_weight=float(c["w_en"]),
        ),
        decoder=decoder,
    )
    return config, genes, annotation


# ------------------------------------------------------------------------------------- key map
_Rule = tuple[re.Pattern, str | Callable[[re.Match], str]]
_RULES: list[_Rule] = [
    (re.compile(p), r)
    for p, r in [
        (r"^embedder\.gene_embedding$", "embedder.feat_enc.emb"),
        (r"^embedder\.proj\.(\w+)$", r"embedder.extra_linear.0.\1"),
        (r"^embedder\.norm\.(\w+)$", r"embedder.extra_linear.3.\1"),
        (
            r"^encoder\.layers\.(\d+)\.attn\.(query|key|value|out)\.(\w+)$",
            r"encoder.layers.\1.self_attn.\2_projection.\3",
        ),
        (r"^encoder\.layers\.(\d+)\.attn_norm\.(\w+)$", r"encoder.layers.\1.norm1.\2"),
        (r"^encoder\.layers\.(\d+)\.ff_norm\.(\w+)$", r"encoder.layers.\1.norm2.\2"),
        (r"^encoder\.layers\.(\d+)\.ff_in\.(\w+)$", r"encoder.layers.\1._ff_block.0.\2"),
        (r"^encoder\.layers\.(\d+)\.ff_out\.(\w+)$", r"encoder.layers.\1._ff_block.3.\2"),
        (r"^pre_latent_norm\.(\w+)$", r"pre_latent_norm.norm.\1"),
        (r"^latent\.cluster_logits\.(\w+)$", r"latent.layers.1.inference.inference_qyx.0.logits.\1"),
        (r"^latent\.hidden\.(\w+)$", r"latent.layers.1.inference.inference_qzyx.0.\1"),
        (r"^latent\.z_mean\.(\w+)$", r"latent.layers.1.inference.inference_qzyx.2.mu.\1"),
        (r"^latent\.z_var\.(\w+)$", r"latent.layers.1.inference.inference_qzyx.2.var.\1"),
        (r"^latent\.prior_mean\.(\w+)$", r"latent.layers.1.inference.y_mu.\1"),
        (r"^latent\.prior_var\.(\w+)$", r"latent.layers.1.inference.y_var.\1"),
        (r"^latent\.proj\.(\w+)$", r"latent.layers.1.lat_2lat.0.\1"),
        (r"^decoder\.blocks\.(\d+)\.linear\.(\w+)$", r"decoder.layers.\1.0.\2"),
        (r"^decoder\.blocks\.(\d+)\.act\.(\w+)$", r"decoder.layers.\1.1.\2"),
        (r"^decoder\.blocks\.(\d+)\.norm\.(\w+)$", r"decoder.layers.\1.3.\2"),
        (r"^decoder\.blocks\.(\d+)\.covariates\.(\w+)\.embedding\.(\w+)$", r"decoder.covariate_layers.\1.\2.0.\3"),
        (r"^decoder\.blocks\.(\d+)\.covariates\.(\w+)\.act\.(\w+)$", r"decoder.covariate_layers.\1.\2.1.\3"),
        (r"^decoder\.blocks\.(\d+)\.covariates\.(\w+)\.norm\.(\w+)$", r"decoder.covariate_layers.\1.\2.2.\3"),
        (r"^decoder\.bottleneck\.(\w+)$", r"decoder.out_layer.dec_1.\1"),
        (r"^decoder\.mean\.(\w+)$", r"decoder.out_layer.dec_mean.0.\1"),
        (r"^decoder\.log_dispersion$", "decoder.out_layer.dec_disp"),
        (r"^head\.mlp\.(\d+)\.(\w+)$", r"head.mlp.\1.\2"),  # same layout: [Dropout, Linear](, ReLU, Dropout, Linear)*
    ]
]


def official_key_map(module: CellPLMModule) -> dict[str, str]:
    """Our state-dict key -> official key, for every tensor of ``module``."""
    if isinstance(module, AnnotationModule) and module.head_config.dropout == 0:
        raise ConfigError("an annotation head without dropout has a different official layout; not supported")
    mapping = {}
    for key in module.state_dict():
        for pattern, repl in _RULES:
            if pattern.match(key):
                mapping[key] = pattern.sub(repl, key)
                break
        else:  # an internal inconsistency, not a user error
            raise RuntimeError(f"no official counterpart rule for parameter {key!r}")
    return mapping


def dead_official_tensors(config: ModelConfig, *, pe_table: bool = True) -> dict[str, tuple[int, ...]]:
    """Official keys with no counterpart in our model, and their expected shapes."""
    d = config.hidden_dim
    dead = {f"embedder.norm0.{k}": tuple(v.shape) for k, v in make_norm(config.norm, d).state_dict().items()}
    if pe_table:
        dead["embedder.pe_enc.missing_pe"] = (d,)
        dead[PE_TABLE_KEY] = (OFFICIAL_PE_GRID**2, d)
    return dead


# ------------------------------------------------------------------------------------- weights
def read_official_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``model_state_dict`` of an official ``.best.ckpt``, read without unpickling objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"official weights file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(err), re.S)
        raise CheckpointError(
            f"{path} holds pickled objects other than tensors and plain containers, so it is not a state dict; "
            f"it was not unpickled (refused by the weights-only reader"
            + (f": {detail.group(1).strip()})" if detail else ")")
        ) from None
    except Exception as err:  # truncated zip, not a torch file, ...
        raise CheckpointError(f"cannot read {path} as a torch checkpoint: {err}") from None
    if isinstance(payload, dict) and "model_state_dict" in payload:
        state = payload["model_state_dict"]
    elif isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state = payload  # a bare state dict
    else:
        found = (
            f"a dict with keys {sorted(map(str, payload))[:8]}" if isinstance(payload, dict) else type(payload).__name__
        )
        raise CheckpointError(
            f"{path} does not hold a state dict: expected a dict with 'model_state_dict' (or a dict of tensors), "
            f"found {found}"
        )
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: 'model_state_dict' is not a non-empty dict of tensors")
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {not_tensors[:8]}")
    return state


def state_dict_from_official(
    module: CellPLMModule, official: dict[str, torch.Tensor], *, pe_table: bool = True
) -> dict[str, torch.Tensor]:
    """Map an official state dict onto ``module``'s keys, strictly (see the module docstring).

    ``pe_table`` says whether the official model had its (dead) positional-encoding module, as it
    does unless its config sets ``pe_type`` to null.
    """
    mapping = official_key_map(module)
    dead = dead_official_tensors(module.config, pe_table=pe_table)
    ours = module.state_dict()
    expected = {off: tuple(ours[key].shape) for key, off in mapping.items()} | dead
    problems = key_mismatches(expected, {k: tuple(v.shape) for k, v in official.items()})
    problems += tensor_problems({off: ours[key].dtype for key, off in mapping.items()}, official)
    if problems:
        raise CheckpointError("official weights do not match the config: " + "; ".join(problems))
    table = official.get(PE_TABLE_KEY)
    if table is not None and not torch.allclose(
        table.float(), sinusoid_table(module.config.hidden_dim, OFFICIAL_PE_GRID), atol=1e-6
    ):
        raise CheckpointError("embedder.pe_enc.pe_enc.weight is not the fixed sinusoid table of the official model")
    logger.debug("dropped dead official tensors: %s", sorted(dead))
    return {key: official[off] for key, off in mapping.items()}


def official_state_dict_from(module: CellPLMModule) -> dict[str, torch.Tensor]:
    """Our weights in the official layout (the inverse of :func:`state_dict_from_official`).

    The dead official tensors are filled as the official constructor would leave them untrained
    (identity norm, zero ``missing_pe``) and with the exact sinusoid table.
    """
    if module.config.positional_encoding != "none":
        raise ConfigError("the official model ignores positional encodings; this model cannot be exported")
    if module.config.input_scaling != "log1p":
        raise ConfigError(
            f"the official model takes log1p of raw counts; a model with input_scaling={module.config.input_scaling!r} "
            "cannot be exported"
        )
    if module.config.decoder is not None and module.config.decoder.block_norm is not None:
        raise ConfigError(
            f"the official decoder normalises each cell on its own; a model with decoder.block_norm="
            f"{module.config.decoder.block_norm!r} cannot be exported"
        )
    ours = module.state_dict()
    out = {off: ours[key].detach().clone() for key, off in official_key_map(module).items()}
    d = module.config.hidden_dim
    out.update({f"embedder.norm0.{k}": v for k, v in make_norm(module.config.norm, d).state_dict().items()})
    out["embedder.pe_enc.missing_pe"] = torch.zeros(d)
    out[PE_TABLE_KEY] = sinusoid_table(d, OFFICIAL_PE_GRID)
    return out


def read_official_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"official config file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path} as JSON: {err}") from None


def official_paths(prefix: str | Path) -> tuple[Path, Path]:
    """``PREFIX.config.json`` and ``PREFIX.best.ckpt``."""
    prefix = str(prefix)
    return Path(prefix + ".config.json"), Path(prefix + ".best.ckpt")


def load_official(prefix: str | Path) -> tuple[CellPLMModule, list[str]]:
    """Build our module from an official checkpoint pair and return it with its gene vocabulary."""
    config_path, weights_path = official_paths(prefix)
    raw = read_official_config(config_path)
    config, genes, head = config_from_official(raw)
    module = build_module(config, head)
    pe_table = raw.get("pe_type", "sin") is not None
    state = state_dict_from_official(module, read_official_weights(weights_path), pe_table=pe_table)
    module.load_state_dict(state, strict=True)
    n = module.n_parameters()
    logger.info("loaded official checkpoint %s: %d genes, %s parameters", prefix, len(genes), f"{n:,}")
    return module.eval(), genes
