"""What every fine-tuned task shares: the recipe's common fields, building from a pretrained model or from scratch,
fine-tuning on the one trainer, writing results with their record, and saving and loading.

A task is a recipe (a :class:`FineTuneRecipe` subclass), an :class:`~opencellplm.train.Objective`, and a thin
subclass of :class:`FineTunedTask` that turns AnnData into cell sets and predictions into AnnData fields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from dataclasses import fields as fields_of
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args

import torch
from anndata import AnnData
from torch import nn

from ..config import ConfigError, TrainConfig
from ..data.sets import InputSpec
from ..model import CellPLM
from ..module import CellPLMModule
from ..train import Distributed, Objective, Trainer, TrainSummary
from ._saved import read_task, reading_settings, recogniser, save_task, setting, settings_dataclass

logger = logging.getLogger(__name__)

T = TypeVar("T", bound="FineTunedTask")
Precision = Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True)
class FineTuneRecipe:
    """The settings every fine-tuning recipe has; each task's recipe extends it with its own (and its defaults).

    Attributes
    ----------
    steps, patience, eval_every
        Optimizer steps at most; evaluate every ``eval_every`` steps and stop after ``patience`` evaluations
        without a better validation score (0 never stops early).
    lr, warmup_steps, weight_decay, grad_clip
        AdamW at ``lr``, linear warm-up then cosine decay to 0.1x, weight decay on matrices, gradient clipping
        (0 disables it).
    sets_per_step
        Cell sets (or the task's items) per optimizer step.
    precision
        ``"auto"`` (bf16 where the hardware has it), ``"bf16"`` or ``"fp32"``.
    seed
        Seeds everything the task draws (splits, initial weights, masks, order).
    """

    steps: int = 300
    patience: int = 5
    eval_every: int = 20
    lr: float = 5e-4
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 2.0
    sets_per_step: int = 1
    precision: Precision = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("steps", "eval_every", "sets_per_step"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name}.{key} must be a positive integer, got {value!r}")
        for key in ("patience", "warmup_steps", "seed"):
            value = getattr(self, key)
            if not _is_int(value) or value < 0:
                raise ConfigError(f"{name}.{key} must be a non-negative integer, got {value!r}")
        for key in ("lr", "weight_decay", "grad_clip"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(f"{name}.{key} must be a number >= 0, got {value!r}")
        if self.precision not in get_args(Precision):
            raise ConfigError(f"{name}.precision={self.precision!r}; choose one of {list(get_args(Precision))}")

    def train_config(self) -> TrainConfig:
        """The trainer's settings: this recipe's, with cosine decay to 0.1x the peak rate and the warm-up cut to
        fit the steps."""
        return TrainConfig(
            steps=self.steps,
            sets_per_step=self.sets_per_step,
            lr=self.lr,
            min_lr_ratio=0.1,
            warmup_steps=min(self.warmup_steps, self.steps - 1),
            weight_decay=self.weight_decay,
            grad_clip=self.grad_clip,
            eval_every=self.eval_every,
            patience=self.patience,
            precision=self.precision,
            seed=self.seed,
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class FineTunedTask:
    """A CellPLM model fine-tuned for one task: the base model, whether its weights are pretrained, the recipe,
    the fitted module, the input spec of the fit and its summary.

    Subclasses set the class attributes below and define ``fit`` (which ends in :meth:`_fine_tune`), their
    predictions, ``score``, and the settings they save beyond the shared ones (:meth:`_settings`,
    :meth:`_restore`).
    """

    #: The recipe class of the task.
    recipe_type: ClassVar[type[FineTuneRecipe]] = FineTuneRecipe
    #: What the task is called in messages ("annotator").
    noun: ClassVar[str] = "task"
    #: The saved task's settings file and format marker.
    settings_file: ClassVar[str] = "task.json"
    format: ClassVar[str] = "opencellplm-task"
    #: A pretrained model does the task before any fit (denoising, imputation).
    zero_shot: ClassVar[bool] = False
    #: Why a model without an NB decoder cannot do the task (None: it can).
    needs_decoder: ClassVar[str | None] = None
    #: Names of the files a saved task holds besides its settings file and ``model/``.
    extra_file_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, base: CellPLM, *, pretrained: bool, recipe: FineTuneRecipe | None = None):
        if self.needs_decoder and base.config.decoder is None:
            raise ValueError(
                f"the model {base.source.get('name', '')!r} has no NB decoder (config.decoder is None, e.g. an "
                f"annotation model), so it cannot {self.needs_decoder}; use a pretrained CellPLM checkpoint such as "
                "'cellplm-small'"
            )
        recipe = self.recipe_type() if recipe is None else recipe
        if not isinstance(recipe, self.recipe_type):
            raise TypeError(f"recipe must be a {self.recipe_type.__name__}, not {type(recipe).__name__}")
        self.base, self.pretrained, self.recipe = base, pretrained, recipe
        #: The fitted weights (None before fit; a zero-shot task then uses the base's).
        self.module: nn.Module | None = None
        self.spec = InputSpec()
        self.summary: Any = None

    # ------------------------------------------------------------------------------------ building
    @classmethod
    def from_pretrained(
        cls: type[T], name_or_model: str | Path | CellPLM, *, recipe: FineTuneRecipe | None = None, device: Any = None
    ) -> T:
        """Start from a pretrained model: a shipped name (``"cellplm-small"``), a checkpoint folder or a loaded
        :class:`~opencellplm.CellPLM`; ``device`` places a model read here (default: the CPU)."""
        return cls(_base_model(name_or_model, device), pretrained=True, recipe=recipe)

    @classmethod
    def from_scratch(
        cls: type[T], like: str | Path | CellPLM, *, recipe: FineTuneRecipe | None = None, device: Any = None
    ) -> T:
        """The architecture and vocabulary of ``like`` with freshly initialised weights (what pretraining adds);
        call ``fit``."""
        return cls(_base_model(like, device), pretrained=False, recipe=recipe)

    @property
    def fitted(self) -> bool:
        """Whether ``fit`` ran (or a fitted task was loaded)."""
        return self.module is not None

    def _require_module(self) -> nn.Module:
        """The weights that predict: the fitted ones, else (zero-shot tasks) the pretrained base's."""
        if self.module is not None:
            return self.module
        if self.zero_shot and self.pretrained:
            return self.base.module
        how = "starts from scratch and " if self.zero_shot else ""
        raise ValueError(f"this {self.noun} {how}is not fitted; call fit() first, or load() a saved one")

    # -------------------------------------------------------------------------------- fine-tuning
    def _fine_tune(
        self,
        module: nn.Module,
        objective: Objective,
        *,
        device: Any = None,
        config: TrainConfig | None = None,
        out: Path | None = None,
        resume: bool = False,
        compete_with_start: bool = False,
        best_state: dict[str, torch.Tensor] | None = None,
    ) -> TrainSummary:
        """Train ``module`` on ``objective`` with the recipe's settings (or ``config``) on ``device`` (default: the
        base model's), keeping the best evaluated weights; with ``compete_with_start`` the starting weights stay
        when fine-tuning never beats them. ``best_state``: the best weights of the run being resumed."""
        world = Distributed.start(device or self.base.device)
        try:
            trainer = Trainer(
                module,
                objective,
                config or self.recipe.train_config(),
                world,
                out=out,
                resume=resume,
                keep_best=True,
                compete_with_start=compete_with_start,
            )
            if best_state is not None:
                trainer.best_state = best_state
            return trainer.fit()
        finally:
            world.stop()

    # ----------------------------------------------------------------------------------- results
    @staticmethod
    def _refuse_view(adata: AnnData, instead: str) -> None:
        if adata.is_view:
            raise ValueError(f"adata is a view; call adata.copy() first, or use {instead}")

    @staticmethod
    def _write_record(adata: AnnData, key: str, record: dict[str, Any]) -> None:
        """``uns['cellplm'][key] = record``: the settings and model behind the result written under ``key``."""
        adata.uns.setdefault("cellplm", {})[key] = record

    # ------------------------------------------------------------------------------ save / load
    def _settings(self) -> dict[str, Any]:
        """The task's own saved settings, besides ``pretrained``, ``recipe``, ``base`` and ``fit``."""
        return {}

    def _saved_module(self) -> CellPLMModule:
        """The module written to ``model/`` (our checkpoint format)."""
        return self._require_module()

    def _meta(self) -> dict[str, Any]:
        """The checkpoint metadata written with the module."""
        return self.base.meta

    def _extra_files(self) -> dict[str, Callable[[Path], None]]:
        """Further files of the saved task, by name: functions writing them (given the path)."""
        return {}

    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write the weights in use (our checkpoint format, in ``model/``) with the recipe, the fit summary, the
        base checkpoint's identity, the task's own settings and the sha256 of every file (the settings file);
        ``overwrite`` replaces only a saved task of the same kind."""
        module = self._saved_module()
        settings = {
            "pretrained": self.pretrained,
            "recipe": asdict(self.recipe),
            "base": self.base.source,
            "fit": None if self.summary is None else asdict(self.summary),
        } | self._settings()
        return save_task(
            directory,
            self.settings_file,
            self.format,
            settings,
            module,
            self.base.genes,
            self._meta(),
            overwrite=overwrite,
            extra=self._extra_files(),
        )

    @classmethod
    def load(cls: type[T], directory: str | Path, *, device: Any = "cpu") -> T:
        """Read a task written by :meth:`save`. Its checksums and every setting are checked first: an edited or
        malformed settings file is refused, naming the file."""
        directory = Path(directory)
        settings, module, genes, meta = read_task(directory, cls.settings_file, cls.format)
        path = directory / cls.settings_file
        cls._check_saved(directory, settings, module, meta)
        recipe = settings_dataclass(path, settings, "recipe", cls.recipe_type)
        with reading_settings(path):
            pretrained = setting(path, settings, "pretrained", bool)
            base = CellPLM(module, genes, meta=meta, source=settings.get("base"), device=device)
            task = cls(base, pretrained=pretrained, recipe=recipe)
            task._restore(directory, settings)
        return task

    @classmethod
    def _check_saved(cls, directory: Path, settings: dict[str, Any], module: CellPLMModule, meta: dict) -> None:
        """Refuse a saved task whose parts disagree, before anything is built (default: nothing to check)."""

    def _restore(self, directory: Path, settings: dict[str, Any]) -> None:
        """Set the task's own state from its saved ``settings`` (the base, pretrained flag and recipe are set)."""

    @classmethod
    def problems(cls, folder: Path) -> list[str]:
        """Why ``folder`` is not a saved task of this kind holding nothing else (empty if it is)."""
        return recogniser(cls.settings_file, cls.format, extra=cls.extra_file_names)(folder)


def resolve_spec(spec: InputSpec | None, fields: dict[str, Any], default: InputSpec | None = None) -> InputSpec:
    """The input settings of a task call: ``spec`` (an :class:`~opencellplm.data.InputSpec`) with the keyword
    ``fields`` replacing its values, or ``default`` (else the defaults) when neither is given."""
    if spec is not None and not isinstance(spec, InputSpec):
        raise TypeError(f"spec must be an InputSpec or None, not {type(spec).__name__}")
    known = {f.name for f in fields_of(InputSpec)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"unknown input setting(s) {unknown}; the InputSpec fields are {sorted(known)}")
    if spec is None and not fields:
        return default or InputSpec()
    return replace(spec or InputSpec(), **fields)


def _device(device: Any) -> torch.device:
    """``device`` with a CUDA index filled in (``"cuda"`` is the current GPU), so that names of one device compare
    equal."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return device


def _base_model(name_or_model: str | Path | CellPLM, device: Any) -> CellPLM:
    if isinstance(name_or_model, CellPLM):
        if device is not None and _device(device) != _device(name_or_model.device):
            raise ValueError(
                f"the model given is on {name_or_model.device}, not {device}: move it first "
                f"(CellPLM.from_pretrained(..., device={str(device)!r})), or leave device out"
            )
        return name_or_model
    return CellPLM.from_pretrained(name_or_model, device="cpu" if device is None else device)
