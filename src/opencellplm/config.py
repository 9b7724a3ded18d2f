"""Model hyperparameters as frozen dataclasses.

A :class:`ModelConfig` holds architecture only (no training settings, no gene list: the vocabulary
lives in its own file next to the weights). ``to_dict`` / ``from_dict`` round-trip through JSON and
``from_dict`` rejects unknown keys, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_type_hints

NormName = Literal["groupnorm", "layernorm", "batchnorm", "rmsnorm"]
BlockNormName = Literal["cellset", "cellset_keep_mean"]
LatentKind = Literal["gmvae", "ae"]
PositionalEncoding = Literal["none", "sinusoidal"]
InputScaling = Literal["log1p", "log1p_cp10k"]

logger = logging.getLogger(__name__)

#: The key under which older model configs held their :class:`MaskingConfig` (dropped on reading).
LEGACY_MASKING_KEY = "masking"
#: The key under which model configs held the annotation head (``null`` for every model but an annotator's);
#: the head is a task module's now (:mod:`opencellplm.module.annotation` reads it from a checkpoint).
LEGACY_ANNOTATION_KEY = "annotation"


class ConfigError(ValueError):
    """A configuration dictionary that cannot describe a model."""


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not supported; choose one of {list(allowed)}")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_number(name: str, value: float, *, minimum: float | None = None) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")


def _check_rate(name: str, value: float, *, upper_inclusive: bool = False) -> None:
    _check_number(name, value)
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
        raise ConfigError(f"{name} must be in [0, 1{']' if upper_inclusive else ')'}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """Transformer over the cells of one set.

    Attributes
    ----------
    n_layers
        Number of pre-norm Flowformer blocks.
    n_heads
        Attention heads; ``hidden_dim`` must be divisible by it.
    attention_dropout
        Dropout after the attention output projection (the official model fixes it at 0.01,
        independently of the model dropout).
    """

    n_layers: int = 4
    n_heads: int = 8
    attention_dropout: float = 0.01

    def __post_init__(self) -> None:
        _check_positive("encoder.n_layers", self.n_layers)
        _check_positive("encoder.n_heads", self.n_heads)
        _check_rate("encoder.attention_dropout", self.attention_dropout)


@dataclass(frozen=True, kw_only=True)
class LatentConfig:
    """Latent layer after the pre-latent LayerNorm.

    Attributes
    ----------
    kind
        ``"gmvae"``: Gaussian-mixture VAE (pretraining, the cell embedding is the posterior mean);
        ``"ae"``: a single linear projection (the official annotation fine-tuning setting).
    dim
        Size of the cell embedding.
    n_clusters
        Mixture components (GMVAE only).
    hidden_dim
        Width of the q(z | h, y) hidden layer (hard-coded to 512 in the official model).
    loss_floor
        Each GMVAE loss term is floored at this value (official ``lamda``); below it, no gradient.
    gaussian_weight, categorical_weight
        Weights of the Gaussian and categorical GMVAE terms (official ``w_li``, ``w_en``).
    """

    kind: LatentKind = "gmvae"
    dim: int = 512
    n_clusters: int = 16
    hidden_dim: int = 512
    loss_floor: float = 5.0
    gaussian_weight: float = 5.0
    categorical_weight: float = 5.0

    def __post_init__(self) -> None:
        _check_choice("latent.kind", self.kind, get_args(LatentKind))
        _check_positive("latent.dim", self.dim)
        _check_positive("latent.n_clusters", self.n_clusters)
        _check_positive("latent.hidden_dim", self.hidden_dim)
        _check_number("latent.loss_floor", self.loss_floor)
        _check_number("latent.gaussian_weight", self.gaussian_weight, minimum=0.0)
        _check_number("latent.categorical_weight", self.categorical_weight, minimum=0.0)


@dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """Batch-aware negative-binomial decoder over the whole gene vocabulary.

    Attributes
    ----------
    hidden_dim
        Width of the hidden blocks.
    n_hidden_layers
        Hidden blocks (official ``dec_layers - 1``); with 0 the bottleneck reads the embedding.
    bottleneck_dim
        Width of the ReLU layer before the NB mean (128, not exposed by the official config).
    n_batches, n_datasets, n_platforms
        Rows of each covariate embedding table; 0 disables that covariate.
    block_norm
        Normalisation of the hidden blocks: ``None`` (the model's ``norm``, as the official decoder), ``"cellset"``
        (each feature standardised over the cells of the set, :class:`~opencellplm.nn.norm.CellSetNorm`) or
        ``"cellset_keep_mean"`` (only the spread standardised, the set's mean kept). Models of our own use a
        cell-set norm: with a per-cell norm the decoder learns to ignore the cell in short pretraining runs.
    """

    hidden_dim: int = 1024
    n_hidden_layers: int = 1
    bottleneck_dim: int = 128
    n_batches: int = 0
    n_datasets: int = 0
    n_platforms: int = 0
    block_norm: BlockNormName | None = None

    def __post_init__(self) -> None:
        _check_positive("decoder.hidden_dim", self.hidden_dim)
        if not isinstance(self.n_hidden_layers, int) or self.n_hidden_layers < 0:
            raise ConfigError(f"decoder.n_hidden_layers must be a non-negative integer, got {self.n_hidden_layers!r}")
        _check_positive("decoder.bottleneck_dim", self.bottleneck_dim)
        for name in ("n_batches", "n_datasets", "n_platforms"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"decoder.{name} must be a non-negative integer, got {value!r}")
        if self.block_norm is not None:
            _check_choice("decoder.block_norm", self.block_norm, get_args(BlockNormName))

    @property
    def covariate_sizes(self) -> dict[str, int]:
        """Covariate name -> embedding rows, for the covariates in use, in a fixed order."""
        sizes = {"batch": self.n_batches, "dataset": self.n_datasets, "platform": self.n_platforms}
        return {name: n for name, n in sizes.items() if n > 0}


@dataclass(frozen=True, kw_only=True)
class AnnotationHeadConfig:
    """Cell-type classifier on the cell embedding (a task module's part, not the backbone's: see
    :class:`~opencellplm.module.annotation.AnnotationModule`).

    Attributes
    ----------
    n_classes
        Number of cell types.
    hidden_dim, n_hidden_layers
        Optional ReLU hidden layers; 0 layers is the official linear head.
    dropout
        Dropout before every linear layer.
    """

    n_classes: int
    hidden_dim: int = 1024
    n_hidden_layers: int = 0
    dropout: float = 0.5

    def __post_init__(self) -> None:
        _check_positive("annotation.n_classes", self.n_classes)
        if not isinstance(self.n_hidden_layers, int) or self.n_hidden_layers < 0:
            raise ConfigError(
                f"annotation.n_hidden_layers must be a non-negative integer, got {self.n_hidden_layers!r}"
            )
        _check_rate("annotation.dropout", self.dropout)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnnotationHeadConfig:
        """Build from a dictionary, raising :class:`ConfigError` on unknown or missing keys."""
        return _from_dict(cls, data, path="annotation")


@dataclass(frozen=True, kw_only=True)
class MaskingConfig:
    """Training-time cell dropping and masking (cell-level masked modelling).

    Not part of a :class:`ModelConfig`: the training objective that corrupts its input owns it and
    passes it to :meth:`~opencellplm.module.CellPLMModule.forward` (``corrupt=``).

    Attributes
    ----------
    cell_rate
        Share of cells that get masked genes (official ``mask_node_rate``).
    gene_rate
        Share of genes masked in a masked cell, or the mean of its Beta distribution.
    beta
        Draw each masked cell's gene share from Beta(5, 4/gene_rate - 3), capped at 0.9.
        (The official config sets ``mask_beta: true`` but passes it to the wrong argument, so the
        official model trains with ``beta=False``.)
    drop_cell_rate
        Share of cells dropped from each set before the forward (official ``drop_node_rate``).
    max_cells
        Cap on the cells kept per set after dropping (official ``max_batch_size``).
    masked_term
        Add the NB term evaluated on the masked entries only (official ``dae``).
    thin_rate, thin_min_keep
        Augmentation by binomial thinning (not in the official model; 0 turns it off): in training mode only,
        ``thin_rate`` of the kept cells get a new, lower sequencing depth, each of their counts drawn as
        Binomial(count, p) with p ~ Uniform(thin_min_keep, 1) per cell, before any gene is masked. The thinned
        counts are then both the input and the reconstruction target, so the model sees the same cells at
        several depths. Validation (eval mode) sees the real depths.
    """

    cell_rate: float = 0.75
    gene_rate: float = 0.25
    beta: bool = False
    drop_cell_rate: float = 0.3
    max_cells: int = 4000
    masked_term: bool = True
    thin_rate: float = 0.0
    thin_min_keep: float = 0.25

    def __post_init__(self) -> None:
        _check_rate("masking.cell_rate", self.cell_rate, upper_inclusive=True)
        _check_rate("masking.gene_rate", self.gene_rate, upper_inclusive=True)
        _check_rate("masking.drop_cell_rate", self.drop_cell_rate)
        _check_positive("masking.max_cells", self.max_cells)
        _check_rate("masking.thin_rate", self.thin_rate, upper_inclusive=True)
        _check_rate("masking.thin_min_keep", self.thin_min_keep)
        if self.thin_rate > 0 and self.thin_min_keep == 0:
            raise ConfigError("masking.thin_min_keep must be > 0 when thin_rate > 0 (a cell thinned to no counts)")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """All hyperparameters of a CellPLM model.

    Attributes
    ----------
    n_genes
        Rows of the gene embedding table (the vocabulary size).
    hidden_dim
        Width of the gene embedding, embedder and encoder (official ``enc_hid``).
    dropout
        Dropout in the embedder, encoder and decoder (official ``model_dropout``).
    norm
        Normalisation in the embedder and the decoder (the encoder always uses LayerNorm).
    positional_encoding
        ``"sinusoidal"`` adds a 2-D sin/cos encoding of each cell's coordinates to its input token;
        ``"none"`` (the official checkpoints: their encoding is disabled in code) adds nothing.
    pe_grid_size
        Coordinates in [0, 1] are binned to this many positions per axis.
    input_scaling
        What weights a gene's embedding in a cell's token: ``"log1p"`` of the raw count (the official model: a
        cell's sequencing depth enters its token), or ``"log1p_cp10k"``, log1p of the count per 10,000 counts
        of the cell's input genes (depth-normalised, for models of our own).
    decoder
        NB decoder, or ``None`` for an encoder-only model.

    Architecture only: training settings belong to the objectives (:class:`MaskingConfig`, :class:`TrainConfig`)
    and task heads to the task modules (:class:`AnnotationHeadConfig`).
    """

    n_genes: int
    hidden_dim: int = 1024
    dropout: float = 0.2
    norm: NormName = "groupnorm"
    positional_encoding: PositionalEncoding = "none"
    pe_grid_size: int = 100
    input_scaling: InputScaling = "log1p"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    decoder: DecoderConfig | None = field(default_factory=DecoderConfig)

    def __post_init__(self) -> None:
        sections = {
            "encoder": (EncoderConfig, False),
            "latent": (LatentConfig, False),
            "decoder": (DecoderConfig, True),
        }
        for name, (section, optional) in sections.items():
            value = getattr(self, name)
            if not (isinstance(value, section) or (optional and value is None)):
                raise ConfigError(f"{name} must be a {section.__name__}{' or None' if optional else ''}, got {value!r}")
        _check_positive("n_genes", self.n_genes)
        _check_positive("hidden_dim", self.hidden_dim)
        _check_positive("pe_grid_size", self.pe_grid_size)
        _check_rate("dropout", self.dropout)
        _check_choice("norm", self.norm, get_args(NormName))
        _check_choice("positional_encoding", self.positional_encoding, get_args(PositionalEncoding))
        _check_choice("input_scaling", self.input_scaling, get_args(InputScaling))
        if self.hidden_dim % self.encoder.n_heads:
            raise ConfigError(
                f"hidden_dim={self.hidden_dim} is not divisible by encoder.n_heads={self.encoder.n_heads}"
            )
        if self.positional_encoding == "sinusoidal" and self.hidden_dim % 4:
            raise ConfigError(f"the sinusoidal encoding needs hidden_dim divisible by 4, got {self.hidden_dim}")
        if self.norm == "groupnorm" and self.hidden_dim % 4:
            raise ConfigError(f"groupnorm uses 4 groups and needs hidden_dim divisible by 4, got {self.hidden_dim}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (nested sections as dictionaries, ``None`` for absent parts)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config, raising :class:`ConfigError` on unknown or missing keys.

        A ``"masking"`` key (the training-time corruption that configs written before it moved to the
        training objectives held) is dropped, and so is an ``"annotation"`` key of ``null`` (no head: every
        config but an annotator's); a head is refused here, as it is no part of the backbone
        (:func:`~opencellplm.module.annotation.read_module_config` reads a checkpoint's).
        """
        if isinstance(data, dict) and LEGACY_MASKING_KEY in data:
            logger.debug("ignoring the model config's %r (training settings, not architecture)", LEGACY_MASKING_KEY)
            data = {k: v for k, v in data.items() if k != LEGACY_MASKING_KEY}
        if isinstance(data, dict) and LEGACY_ANNOTATION_KEY in data:
            if data[LEGACY_ANNOTATION_KEY] is not None:
                raise ConfigError(
                    "the model config holds an annotation head, which is a task module's, not the backbone's: read "
                    "it with opencellplm.module.annotation.read_module_config (load_checkpoint does)"
                )
            data = {k: v for k, v in data.items() if k != LEGACY_ANNOTATION_KEY}
        return _from_dict(cls, data, path="")

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some top-level fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


Precision = Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Pretraining settings (not part of a model checkpoint's config).

    Attributes
    ----------
    steps
        Optimizer steps.
    sets_per_step
        Cell sets per optimizer step, over all processes (a multiple of the world size).
    lr, min_lr_ratio, warmup_steps
        Peak learning rate, reached linearly over ``warmup_steps``, then cosine decay to
        ``lr * min_lr_ratio`` at ``steps``.
    weight_decay
        AdamW weight decay, applied to matrices and embeddings only (not to biases and norms).
    grad_clip
        Largest gradient norm (0 disables clipping).
    val_fraction
        Share of the corpus's cell sets held out for validation (at least one set).
    eval_every, patience
        Validate every ``eval_every`` steps; stop after ``patience`` validations without improvement
        (0 never stops early).
    checkpoint_every
        Write the resumable training state every this many steps.
    log_every
        Write a metrics line every this many steps.
    precision
        ``"bf16"`` autocasts matrix products to bfloat16; ``"auto"`` does so on CUDA devices and
        CPUs with bfloat16 instructions; ``"fp32"`` never.
    shuffle_window
        Sets are shuffled within windows of this many shards (bounds the shards read per step).
    seed
        Seeds the data order, validation split, initialisation, masks and dropout.
    encoder_lr_ratio
        Pretraining: the learning rate of everything but the NB decoder (gene embeddings, encoder, latent), as a
        share of ``lr``; below 1 the encoder stays nearer its start (e.g. the corpus PCA) while the decoder learns.
    """

    steps: int = 1000
    sets_per_step: int = 4
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 2.0
    val_fraction: float = 0.05
    eval_every: int = 100
    patience: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    precision: Precision = "auto"
    shuffle_window: int = 8
    seed: int = 0
    encoder_lr_ratio: float = 1.0

    def __post_init__(self) -> None:
        for name in ("steps", "sets_per_step", "eval_every", "checkpoint_every", "log_every", "shuffle_window"):
            _check_positive(f"train.{name}", getattr(self, name))
        for name in ("warmup_steps", "patience", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"train.{name} must be a non-negative integer, got {value!r}")
        _check_number("train.lr", self.lr, minimum=0.0)
        _check_rate("train.min_lr_ratio", self.min_lr_ratio, upper_inclusive=True)
        _check_number("train.weight_decay", self.weight_decay, minimum=0.0)
        _check_number("train.grad_clip", self.grad_clip, minimum=0.0)
        _check_rate("train.val_fraction", self.val_fraction)
        _check_choice("train.precision", self.precision, get_args(Precision))
        _check_rate("train.encoder_lr_ratio", self.encoder_lr_ratio, upper_inclusive=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dictionary, raising :class:`ConfigError` on unknown keys."""
        return _from_dict(cls, data, path="train")


def _from_dict(cls: type, data: Any, path: str) -> Any:
    where = f"'{path}'" if path else "the model config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {unknown}; known keys: {sorted(fields)}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        section = _section_type(hints[name])
        if section is not None and value is not None:
            value = _from_dict(section, value, path=f"{path}.{name}" if path else name)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required key is missing
        raise ConfigError(f"{where}: {err}") from None


def _section_type(hint: Any) -> type | None:
    """The dataclass inside ``Section`` or ``Section | None``, else None."""
    candidates = get_args(hint) or (hint,)
    for candidate in candidates:
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None
