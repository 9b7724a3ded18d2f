"""Cell type annotation: fine-tune CellPLM with a classification head, predict label strings, score.

The recipe is the official one (TASKS.md §4): the backbone (gene embedding, encoder, pre-latent
norm) from a pretrained model, a fresh linear 'ae' latent and a linear head with dropout 0.5 on it;
dropout 0.5 throughout; 30% of a set's cells dropped and 75% of cells with 25% of their genes masked
at every step; AdamW at lr 5e-3 with the gene embedder at 0.1x; linear warm-up; clipping at 2.0; the
state with the best validation macro F1 is kept (ties, common on a small validation share, broken by the
lower validation loss), with early stopping. Unlike the official code the
pre-latent norm is trained too (the official optimizer leaves it out, by accident).

Two modes, recorded with every result:

* ``"inductive"`` (default): sets hold training cells only; query cells are never seen in training.
* ``"transductive"`` (the official protocol): the cells to annotate go through the same forward
  passes as the training cells (cells attend to each other); the loss covers training cells only.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import nn

from .. import baselines as _baselines
from .._memory import PeakMemory
from .._threads import thread_settings
from ..baselines.registry import REGISTRY, baselines_for, run_baseline
from ..config import AnnotationHeadConfig, MaskingConfig, ModelConfig
from ..data.labels import has_label
from ..data.sets import CellSets, InputSpec
from ..data.validate import require_anndata
from ..metrics import ClassificationScores, classification_scores
from ..model import CellPLM
from ..module import CellPLMModule
from ..module.annotation import AnnotationModule, classification_loss
from ..module.losses import LossOutput
from ..train import Distributed, Objective, ParamGroup
from ..train.plan import shuffled_batch
from ..train.trainer import Autocast
from ._saved import MODEL_DIR, settings_dataclass
from .base import FineTunedTask, FineTuneRecipe, Precision, resolve_spec
from .result import MethodScore, TaskResult

logger = logging.getLogger(__name__)

Mode = Literal["inductive", "transductive"]
FORMAT = "opencellplm-annotator"
SETTINGS_FILE = "annotator.json"
#: Backbone weights carried over from the pretrained model; the rest (latent, head) starts fresh.
BACKBONE = ("embedder.", "encoder.", "pre_latent_norm.")
UNLABELLED = -1
#: The annotation baselines of TASKS §4, by name (:mod:`opencellplm.baselines.registry`).
BASELINES = tuple(REGISTRY["annotation"])


@dataclass(frozen=True)
class AnnotationRecipe(FineTuneRecipe):
    """Fine-tuning settings (the official recipe, with CPU-sized step counts); the shared ones are
    :class:`~opencellplm.tasks.base.FineTuneRecipe`'s.

    Attributes
    ----------
    steps, patience, eval_every
        Optimizer steps at most; stop after ``patience`` evaluations without a better validation
        macro F1 (official: up to 2000 epochs, patience 200).
    lr, embedder_lr_scale, warmup_steps, weight_decay, grad_clip
        AdamW at ``lr`` (the gene embedder at ``lr * embedder_lr_scale``), linear warm-up then cosine
        decay, weight decay on matrices, gradient clipping.
    dropout
        Dropout of the whole network and of the head.
    drop_cell_rate, mask_cell_rate, mask_gene_rate
        Training-time corruption (input dropout): cells dropped, cells masked and genes masked in them.
    sets_per_step
        Cell sets per optimizer step.
    validation_fraction
        Share of the labelled training cells held out (stratified by label) to choose the best state.
    precision
        ``"auto"`` (bf16 where the hardware has it), ``"bf16"`` or ``"fp32"``.
    seed
        Seeds the split, the initial head, the corruption and the set order.
    """

    steps: int = 300
    patience: int = 30
    eval_every: int = 2
    lr: float = 5e-3
    embedder_lr_scale: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.01
    grad_clip: float = 2.0
    dropout: float = 0.5
    drop_cell_rate: float = 0.3
    mask_cell_rate: float = 0.75
    mask_gene_rate: float = 0.25
    sets_per_step: int = 1
    validation_fraction: float = 0.1
    precision: Precision = "auto"
    seed: int = 0

    def masking(self) -> MaskingConfig:
        """The training-time corruption of the fine-tuning forward."""
        return MaskingConfig(
            cell_rate=self.mask_cell_rate,
            gene_rate=self.mask_gene_rate,
            drop_cell_rate=self.drop_cell_rate,
            beta=False,
        )


def annotation_config(
    backbone: ModelConfig, n_classes: int, recipe: AnnotationRecipe
) -> tuple[ModelConfig, AnnotationHeadConfig]:
    """The backbone's architecture with a linear 'ae' latent and no decoder, and a linear head of ``n_classes``."""
    config = backbone.replace(dropout=recipe.dropout, latent=replace(backbone.latent, kind="ae"), decoder=None)
    return config, AnnotationHeadConfig(n_classes=n_classes, n_hidden_layers=0, dropout=recipe.dropout)


def annotation_module(
    backbone: CellPLMModule | None, config: ModelConfig, head: AnnotationHeadConfig, *, seed: int
) -> AnnotationModule:
    """A module of ``config`` and ``head`` whose backbone weights come from ``backbone`` (None: all freshly
    initialised)."""
    torch.manual_seed(seed)
    module = AnnotationModule(config, head)
    if backbone is not None:
        ours, theirs = module.state_dict(), backbone.state_dict()
        keys = [k for k in ours if k.startswith(BACKBONE)]
        wrong = [k for k in keys if k not in theirs or theirs[k].shape != ours[k].shape]
        if wrong:
            raise ValueError(f"the pretrained model's backbone does not fit: {wrong[:5]}")
        module.load_state_dict({**ours, **{k: theirs[k] for k in keys}})
    return module


class AnnotationObjective(Objective):
    """Cross-entropy on the training cells of each set; validation macro F1 picks the best state, the
    validation loss among states of equal F1."""

    monitor = "val_f1"
    maximize = True
    tiebreak = "val_loss"
    objective_name = "ce_loss"

    def __init__(
        self,
        train: CellSets,
        labels: np.ndarray,
        in_loss: np.ndarray,
        validation: CellSets,
        in_validation: np.ndarray,
        *,
        sets_per_step: int,
        embedder_lr_scale: float,
        seed: int,
        masking: MaskingConfig,
    ):
        self.masking = masking
        self.train, self.validation = train, validation
        self.labels, self.in_loss, self.in_validation = labels, in_loss, in_validation
        self.sets_per_step, self.embedder_lr_scale, self.seed = sets_per_step, embedder_lr_scale, seed
        # Sets holding no training cell add nothing to the loss.
        self.items = [i for i, rows in enumerate(train.sets) if in_loss[rows].any()]

    def global_batch(self, step: int) -> list[int]:
        return shuffled_batch(self.items, step, self.sets_per_step, self.seed, stream=3)

    def loss(self, model: nn.Module, item: int, device: torch.device, autocast: Autocast) -> tuple[LossOutput, int]:
        cell_set = self.train.read(item, device)
        with autocast():
            out = model(cell_set.batch, corrupt=self.masking)
        labels = torch.as_tensor(self.labels[cell_set.rows], device=device)
        mask = torch.as_tensor(self.in_loss[cell_set.rows], device=device)
        return classification_loss(out, labels.clamp_min(0), mask=mask), int(mask[out.kept_cells].sum())

    def evaluate(self, module: nn.Module, world: Distributed, autocast: Autocast) -> dict[str, float]:
        from sklearn.metrics import f1_score

        truth, predicted, losses = [], [], []
        for cell_set in self.validation.iterate(world.device):
            chosen = self.in_validation[cell_set.rows]
            if not chosen.any():
                continue
            with autocast():
                logits = module(cell_set.batch).logits.float()[torch.as_tensor(chosen, device=world.device)]
            labels = torch.as_tensor(self.labels[cell_set.rows][chosen], device=world.device)
            losses.append(float(nn.functional.cross_entropy(logits, labels, reduction="sum")))
            truth.append(self.labels[cell_set.rows][chosen])
            predicted.append(logits.argmax(1).cpu().numpy())
        truth, predicted = np.concatenate(truth), np.concatenate(predicted)
        f1 = f1_score(truth, predicted, average="macro", labels=np.unique(truth), zero_division=0)
        return {"val_f1": float(f1), "val_loss": sum(losses) / len(truth)}

    def param_groups(self, module: nn.Module) -> list[ParamGroup]:
        embedder = list(module.embedder.parameters())
        ids = {id(p) for p in embedder}
        rest = [p for p in module.parameters() if id(p) not in ids]
        return [
            ParamGroup("gene embedder", embedder, self.embedder_lr_scale),
            ParamGroup("encoder, latent, head", rest),
        ]


@dataclass
class AnnotationResult:
    """Predictions for the cells of one AnnData, rows in ``obs_names`` order (NaN/None for cells left out)."""

    labels: np.ndarray
    probability: np.ndarray
    probabilities: np.ndarray
    classes: list[str]


@dataclass
class FitSummary:
    """What :meth:`CellTypeAnnotator.fit` did."""

    mode: Mode
    n_train: int
    n_validation: int
    n_unlabelled_left_out: int
    classes: list[str]
    steps: int
    best_val_f1: float | None
    seconds: float
    train_cells_per_s: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    #: The step whose weights were kept (best validation macro F1, then lowest validation loss); ``steps`` is
    #: how many were run. None: no evaluation, the starting weights are kept.
    best_step: int | None = None


@dataclass
class AnnotationScores(TaskResult):
    """Scores of the annotator and the baselines on the same test cells: a
    :class:`~opencellplm.tasks.result.TaskResult`.

    ``methods`` holds one :class:`~opencellplm.tasks.result.MethodScore` per method (``macro_f1``,
    ``macro_precision``, ``accuracy``; for a baseline its ``params``, its seed included), ``classification`` each
    method's full :class:`~opencellplm.metrics.ClassificationScores` (per-class scores, confusion matrix); ``mode``
    says whether CellPLM was fitted inductively or transductively.
    """

    mode: Mode
    n_test: int
    unseen_labels: list[str]
    methods: list[MethodScore]
    classification: dict[str, ClassificationScores]
    settings: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per method: macro F1, macro precision, accuracy, fit and predict seconds."""
        rows = {
            m.method: m.scores | {"fit_seconds": m.fit_seconds, "predict_seconds": m.predict_seconds}
            for m in self.methods
        }
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis(f"method ({self.mode})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "n_test": self.n_test,
            "unseen_labels": self.unseen_labels,
            "methods": {
                m.method: {
                    "scores": self.classification[m.method].to_dict(),
                    "fit_seconds": m.fit_seconds,
                    "predict_seconds": m.predict_seconds,
                }
                | ({"params": m.params} if m.family == "baseline" else {})
                for m in self.methods
            },
            "skipped": self.skipped,
            "settings": self.settings,
        }


class CellTypeAnnotator(FineTunedTask):
    """A CellPLM model fine-tuned to annotate cell types.

    Build one from a pretrained model (:meth:`from_pretrained`) or, to measure what pretraining adds,
    the same architecture with fresh weights (:meth:`from_scratch`); then :meth:`fit`, :meth:`predict`,
    :meth:`score`, :meth:`save` and :meth:`load`.

    Examples
    --------
    >>> annotator = CellTypeAnnotator.from_pretrained("cellplm-small")          # doctest: +SKIP
    >>> annotator.fit(reference, labels_key="cell_type").predict(query)          # doctest: +SKIP
    >>> query.obs["cellplm_label"]                                                # doctest: +SKIP
    """

    recipe_type = AnnotationRecipe
    noun = "annotator"
    settings_file, format = SETTINGS_FILE, FORMAT
    recipe: AnnotationRecipe
    summary: FitSummary | None

    def __init__(self, base: CellPLM, *, pretrained: bool, recipe: AnnotationRecipe | None = None):
        super().__init__(base, pretrained=pretrained, recipe=recipe)
        self.classes: list[str] = []
        self.mode: Mode = "inductive"
        self._reference: tuple[AnnData, np.ndarray] | None = None  # fit data, for the baselines of score
        #: The fit data's cell names (sha256) and which cells fit learned from: saved, so that score knows them.
        self._fit_data: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------ fit
    def fit(
        self,
        adata: AnnData,
        labels_key: str,
        *,
        mode: Mode = "inductive",
        train_cells: np.ndarray | None = None,
        device: str | None = None,
        spec: InputSpec | None = None,
        **spec_fields: Any,
    ) -> CellTypeAnnotator:
        """Fine-tune on the labelled cells of ``adata``.

        Parameters
        ----------
        adata
            Raw counts with labels in ``obs[labels_key]``.
        labels_key
            ``obs`` column of cell type labels (strings); cells without a label are left out of the
            loss, and counted.
        mode
            ``"inductive"``: only training cells are embedded during training. ``"transductive"``: every
            cell of ``adata`` takes part in the forward passes (the loss covers training cells only),
            as the official protocol; then :meth:`predict` the same ``adata``.
        train_cells
            Boolean mask of the cells to learn from (default: every labelled cell); the others are the
            cells to annotate (transductive) or are ignored (inductive).
        device
            Torch device (default: the model's).
        spec, **spec_fields
            Where the input is and how cells are grouped: an :class:`~opencellplm.data.InputSpec`, and/or its fields
            as keywords (``layer``, ``gene_key``, ``sample_key``, ``max_cells``, ...; they replace the spec's).
        """
        require_anndata(adata)
        if mode not in ("inductive", "transductive"):
            raise ValueError(f"mode={mode!r}; choose 'inductive' or 'transductive'")
        if labels_key not in adata.obs:
            raise KeyError(f"obs column {labels_key!r} not found; adata.obs has {list(adata.obs.columns)}")
        started = time.perf_counter()
        recipe, self.spec, self.mode = self.recipe, resolve_spec(spec, spec_fields), mode
        labels = adata.obs[labels_key]
        labelled = has_label(labels)  # NaN, and texts such as "nan" that astype(str) leaves, are no cell type
        candidates = labelled if train_cells is None else labelled & np.asarray(train_cells, dtype=bool)
        n_unlabelled = int((~labelled).sum() if train_cells is None else (np.asarray(train_cells) & ~labelled).sum())
        if not candidates.any():
            raise ValueError(f"no cell has a {labels_key!r} label to learn from")
        if n_unlabelled:
            logger.warning(
                "%d cells have no %r label (NaN, None, empty or the text of a missing value such as 'nan'); they are "
                "left out of the training loss",
                n_unlabelled,
                labels_key,
            )
        names = _baselines.label_strings(labels, labels_key)[candidates]
        self.classes = sorted(names.unique())
        if len(self.classes) < 2:
            raise ValueError(f"{labels_key!r} has one class only ({self.classes}); annotation needs at least two")
        codes = np.full(adata.n_obs, UNLABELLED, dtype=np.int64)
        codes[candidates] = pd.Categorical(names, categories=self.classes).codes
        in_validation = _stratified_holdout(codes, candidates, recipe.validation_fraction, recipe.seed)
        if not in_validation.any():
            raise ValueError(
                f"the validation split is empty ({candidates.sum()} labelled cells, validation_fraction="
                f"{recipe.validation_fraction}); label more cells or raise validation_fraction"
            )
        in_loss = candidates & ~in_validation
        if not in_loss.any():
            raise ValueError("no labelled cell is left for training once the validation cells are held out")

        base = self.base
        config, head = annotation_config(base.config, len(self.classes), recipe)
        module = annotation_module(base.module if self.pretrained else None, config, head, seed=recipe.seed)
        annotated = CellPLM(module, base.genes, meta=base.meta, source=base.source, device=base.device)
        if mode == "transductive":
            train = annotated.cell_sets(adata, self.spec, require_counts=False)
            validation = train
        else:
            train = annotated.cell_sets(adata, self.spec, cells=in_loss)
            validation = annotated.cell_sets(adata, self.spec, cells=in_validation)
        objective = AnnotationObjective(
            train,
            codes,
            in_loss & train.keep,
            validation,
            in_validation & validation.keep,
            sets_per_step=recipe.sets_per_step,
            embedder_lr_scale=recipe.embedder_lr_scale,
            seed=recipe.seed,
            masking=recipe.masking(),
        )
        summary = self._fine_tune(module, objective, device=device)
        self.module = module.eval()
        self._reference = (adata, in_loss | in_validation)
        self._fit_data = _fingerprint(adata, in_loss | in_validation)
        self.summary = FitSummary(
            mode=mode,
            n_train=int(objective.in_loss.sum()),
            n_validation=int(objective.in_validation.sum()),
            n_unlabelled_left_out=n_unlabelled,
            classes=self.classes,
            steps=summary.steps,
            best_val_f1=summary.best,
            seconds=round(time.perf_counter() - started, 2),
            train_cells_per_s=summary.train_cells_per_s,
            history=summary.history,
            best_step=summary.best_step,
        )
        logger.info(
            "annotator fitted (%s, %s): %d classes; kept the weights of step %s of %d run (best validation "
            "macro F1 %.3f, ties broken by the validation loss)",
            mode,
            "pretrained" if self.pretrained else "from scratch",
            len(self.classes),
            summary.best_step,
            summary.steps,
            summary.best or float("nan"),
        )
        return self

    # -------------------------------------------------------------------------------- predict
    @torch.inference_mode()
    def get_predictions(self, adata: AnnData) -> AnnotationResult:
        """Label strings, the probability of each chosen label and all class probabilities, in ``obs_names``
        order; writes nothing. Cells without counts in the model's genes get no label."""
        module = self._require_module()
        require_anndata(adata)
        model = CellPLM(module, self.base.genes, meta=self.base.meta, device=self.base.device)
        sets = model.cell_sets(adata, self.spec, left_out="they get no label", warn_stacklevel=3)
        probabilities = np.full((adata.n_obs, len(self.classes)), np.nan, dtype=np.float32)
        module.eval()
        for cell_set in sets.iterate(model.device):
            logits = module(cell_set.batch).logits.float()
            probabilities[cell_set.rows] = torch.softmax(logits, dim=1).cpu().numpy()
        placed = sets.keep
        broken = placed & ~np.isfinite(probabilities).all(1)
        if broken.any():
            raise FloatingPointError(
                f"the annotator gave non-finite probabilities for {int(broken.sum())} cells, e.g. "
                f"{list(adata.obs_names[broken][:5])}; its weights or the input values are broken"
            )
        labels = np.full(adata.n_obs, None, dtype=object)
        chosen = np.nanargmax(np.where(placed[:, None], probabilities, 0), axis=1)
        labels[placed] = np.asarray(self.classes, dtype=object)[chosen[placed]]
        probability = np.where(placed, probabilities[np.arange(adata.n_obs), chosen], np.nan).astype(np.float32)
        return AnnotationResult(labels, probability, probabilities, list(self.classes))

    def predict(self, adata: AnnData, *, key_added: str = "cellplm_label") -> CellTypeAnnotator:
        """Write ``obs[key_added]`` (label strings, categorical), ``obs[key_added + '_probability']``,
        ``obsm[key_added + '_probabilities']`` (columns in ``uns['cellplm'][key_added]['classes']`` order)
        and the settings to ``uns['cellplm'][key_added]``; returns ``self``."""
        require_anndata(adata)
        self._refuse_view(adata, "get_predictions()")
        result = self.get_predictions(adata)
        adata.obs[key_added] = pd.Categorical(result.labels, categories=result.classes)
        adata.obs[f"{key_added}_probability"] = result.probability
        adata.obsm[f"{key_added}_probabilities"] = result.probabilities
        self._write_record(adata, key_added, self._record())
        return self

    # ---------------------------------------------------------------------------------- score
    def score(
        self,
        adata: AnnData,
        labels_key: str,
        *,
        test_cells: np.ndarray | None = None,
        reference: AnnData | None = None,
        baselines: tuple[str, ...] = tuple(BASELINES),
        seed: int = 0,
    ) -> AnnotationScores:
        """Macro F1, macro precision, accuracy and the confusion matrix on the test cells, with the baselines
        (TASKS §4) trained on the same training cells and scored on the same test cells in this call.

        Parameters
        ----------
        adata
            Cells to score, labels in ``obs[labels_key]``.
        test_cells
            Boolean mask of the cells scored. Default: when ``adata`` holds the cells given to :meth:`fit` (the
            same cell names, also for a loaded annotator), the labelled cells fit did not learn from; otherwise
            every labelled cell. Test cells fit learned from are scored with a warning: they flatter CellPLM.
        reference
            Labelled cells the baselines learn from (all of its labelled cells); never ``adata`` itself, whose
            test cells the baselines would learn. Default: the cells :meth:`fit` learned from (training and
            validation).
        baselines
            Names among ``"celltypist_style"``, ``"l1_logistic_cv"``, ``"knn_on_pca"`` and ``"celltypist"`` (the
            CellTypist package, extra ``baselines``: without it, the row is skipped and ``skipped`` says why).
        """
        from .. import __version__

        self._require_module()
        require_anndata(adata)
        if labels_key not in adata.obs:
            raise KeyError(f"obs column {labels_key!r} not found; adata.obs has {list(adata.obs.columns)}")
        chosen = baselines_for("annotation", baselines)
        if reference is adata:
            raise ValueError(
                "the reference is the data being scored: the baselines would learn the test cells' labels; give "
                "labelled cells kept apart from the test cells"
            )
        labelled = has_label(adata.obs[labels_key])
        names = _baselines.label_strings(adata.obs[labels_key], labels_key).to_numpy()
        learned = self._learned_cells(adata)
        if test_cells is None:
            test_cells = labelled.copy()
            if learned is not None:
                test_cells &= ~learned
        test_cells = np.asarray(test_cells, dtype=bool) & labelled
        if not test_cells.any():
            if learned is not None and not (labelled & ~learned).any():
                raise ValueError(
                    "no labelled test cell to score: this is the data the annotator was fitted on, and fit learned "
                    "from every labelled cell; score other cells, or hold test cells out of fit (--test-key)"
                )
            raise ValueError("no labelled test cell to score (every labelled cell was used in training)")
        if learned is not None and (test_cells & learned).any():
            logger.warning(
                "%d of the %d test cells are cells the annotator learned from (this is the data it was fitted on); "
                "their scores flatter it: score only cells fit left out (--test-key, as given to annotate fit)",
                int((test_cells & learned).sum()),
                int(test_cells.sum()),
            )
        truth = names[test_cells]
        unseen = sorted(set(truth) - set(self.classes))
        if unseen:
            logger.warning(
                "test labels never seen in training: %s (%d cells); they count as errors",
                unseen,
                int(np.isin(truth, unseen).sum()),
            )
        methods: list[MethodScore] = []
        classification: dict[str, ClassificationScores] = {}
        skipped: dict[str, str] = {}

        def add(name: str, scores: ClassificationScores, fit_seconds, predict_seconds, params, peak_mb) -> None:
            classification[name] = scores
            numbers = {"macro_f1": scores.macro_f1, "macro_precision": scores.macro_precision}
            numbers["accuracy"] = scores.accuracy
            seconds = (fit_seconds or 0.0) + (predict_seconds or 0.0)
            methods.append(MethodScore(name, numbers, seconds, fit_seconds, predict_seconds, params, peak_mb))

        started = time.perf_counter()
        with PeakMemory(self.base.device) as peak:  # predicting only: fit ran before
            predicted = self.get_predictions(adata).labels[test_cells]
        predicted = np.where(predicted == None, "(no label)", predicted).astype(str)  # noqa: E711 (object array)
        name = "cellplm" if self.pretrained else "cellplm_from_scratch"
        fitted = {} if self.summary is None else {"steps": self.summary.steps, "best_step": self.summary.best_step}
        add(
            name,
            classification_scores(truth, predicted),
            None if self.summary is None else self.summary.seconds,
            round(time.perf_counter() - started, 2),
            {"pretrained": self.pretrained, "mode": self.mode} | fitted,
            peak.mb,
        )
        if baselines:
            if reference is None:
                if learned is None and self._reference is None:
                    raise ValueError(
                        "pass reference= (labelled training cells) to score the baselines of a loaded annotator"
                    )
                train = adata[learned].copy() if learned is not None else self._reference[0][self._reference[1]].copy()
            else:
                require_anndata(reference)
                if labels_key not in reference.obs:
                    columns = list(reference.obs.columns)
                    raise KeyError(f"the reference has no obs column {labels_key!r}; it has {columns}")
                _baselines.label_strings(reference.obs[labels_key], labels_key)  # refuses mixed label types
                train = reference[has_label(reference.obs[labels_key])].copy()
                shared = train.obs_names.isin(adata.obs_names[test_cells])
                if shared.any():
                    logger.warning(
                        "%d reference cells have the names of test cells: if they are the same cells, the baselines "
                        "are scored on cells they learned from",
                        int(shared.sum()),
                    )
            test = adata[test_cells].copy()
            for baseline, entry in chosen.items():
                result, why = run_baseline(entry, train, test, labels_key=labels_key, layer=self.spec.layer, seed=seed)
                if why is not None:  # a package missing, or failing on these data: a skipped row, saying why
                    skipped[baseline] = why
                    logger.warning("baseline %s skipped: %s", baseline, why)
                    continue
                # params: the baseline's settings, its seed included
                fit_s, predict_s = (None if t is None else round(t, 2) for t in result.timing())
                scores = classification_scores(truth, result.prediction)
                add(baseline, scores, fit_s, predict_s, result.params, result.peak_mb)
        return AnnotationScores(
            mode=self.mode,
            n_test=int(test_cells.sum()),
            unseen_labels=unseen,
            methods=methods,
            classification=classification,
            skipped=skipped,
            settings={
                "labels_key": labels_key,
                "seed": seed,
                "checkpoint": self.base.source,
                "recipe": asdict(self.recipe),
                "opencellplm_version": __version__,
                "threads": thread_settings(),
            },
        )

    def _learned_cells(self, adata: AnnData) -> np.ndarray | None:
        """Which cells of ``adata`` fit learned from, when ``adata`` holds the fit's cells (None otherwise)."""
        if self._reference is not None and self._reference[0] is adata:
            return self._reference[1]
        fit = self._fit_data
        if fit is None or fit["n_cells"] != adata.n_obs or fit["cells_sha256"] != _names_sha256(adata.obs_names):
            return None
        bits = np.frombuffer(base64.b64decode(fit["learned"]), dtype=np.uint8)
        return np.unpackbits(bits, count=adata.n_obs).astype(bool)

    def _record(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "params": {k: v for k, v in self.spec.to_dict().items() if v is not None}
            | {"mode": self.mode, "pretrained": self.pretrained},
            "checkpoint": self.base.source,
            "threads": thread_settings(),
        }

    # ----------------------------------------------------------------------------- save / load
    # save() writes the fine-tuned model (our checkpoint format, in ``model/``) with the class names, input spec,
    # mode, recipe, fit summary, the fit data's identity (``fit_data``: its cell names' sha256 and which cells fit
    # learned from, so that score knows them) and the sha256 of every file (``annotator.json``).
    def _settings(self) -> dict[str, Any]:
        return {"classes": self.classes, "mode": self.mode, "spec": self.spec.to_dict(), "fit_data": self._fit_data}

    def _meta(self) -> dict[str, Any]:
        return {
            "source": "opencellplm CellTypeAnnotator (fine-tuned)" if self.pretrained else "trained from scratch",
            "gene_id_rule": self.base.gene_id_rule,
            "base": self.base.source,
            "classes": self.classes,
        }

    @classmethod
    def _check_saved(cls, directory: Path, settings: dict[str, Any], module: CellPLMModule, meta: dict) -> None:
        path = directory / SETTINGS_FILE
        classes = _saved_classes(path, settings, meta, directory / MODEL_DIR / "meta.json")
        head = module.head_config if isinstance(module, AnnotationModule) else None
        if head is None or head.n_classes != len(classes):
            held = "no annotation head" if head is None else f"a head for {head.n_classes} classes"
            raise ValueError(f"{directory / MODEL_DIR} holds {held}, but {path} lists {len(classes)} classes")
        if settings.get("mode") not in ("inductive", "transductive"):
            raise ValueError(f"{path}: 'mode' must be 'inductive' or 'transductive', not {settings.get('mode')!r}")
        if not isinstance(settings.get("pretrained"), bool):
            raise ValueError(f"{path}: 'pretrained' must be true or false, not {settings.get('pretrained')!r}")

    def _restore(self, directory: Path, settings: dict[str, Any]) -> None:
        path = directory / SETTINGS_FILE
        self.spec = settings_dataclass(path, settings, "spec", InputSpec)
        self.module, self.classes, self.mode = self.base.module, list(settings["classes"]), settings["mode"]
        self._fit_data = _saved_fit_data(path, settings.get("fit_data"))


#: Why a folder is not a saved annotator holding nothing else (empty if it is).
annotator_problems = CellTypeAnnotator.problems


def _names_sha256(names: pd.Index) -> str:
    return hashlib.sha256("\n".join(map(str, names)).encode()).hexdigest()


def _fingerprint(adata: AnnData, learned: np.ndarray) -> dict[str, Any]:
    """The fit data's identity (its cell names' sha256) and which of its cells fit learned from (bits)."""
    return {
        "n_cells": int(adata.n_obs),
        "cells_sha256": _names_sha256(adata.obs_names),
        "learned": base64.b64encode(np.packbits(learned.astype(bool)).tobytes()).decode("ascii"),
    }


def _saved_fit_data(path: Path, value: Any) -> dict[str, Any] | None:
    """The ``fit_data`` entry of ``path`` checked (None: saved before it was recorded)."""
    if value is None:
        return None
    try:
        n, bits = int(value["n_cells"]), base64.b64decode(value["learned"], validate=True)
        ok = isinstance(value["cells_sha256"], str) and len(bits) == (n + 7) // 8
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{path}: 'fit_data' is not the record opencellplm writes; fit the annotator again")
    return value


def _saved_classes(path: Path, settings: dict[str, Any], meta: dict[str, Any], meta_path: Path) -> list[str]:
    """The class names of ``path``, checked: distinct strings, the same as the two copies saved beside them."""
    classes = settings.get("classes")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
        raise ValueError(f"{path}: 'classes' must be a list of at least two label names, not {classes!r}")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ValueError(f"{path}: 'classes' names {repeated} more than once")
    fit = settings.get("fit")
    copies = {f"'fit.classes' in {path.name}": fit.get("classes") if isinstance(fit, dict) else None}
    copies[str(meta_path)] = meta.get("classes")
    for where, other in copies.items():
        if other is not None and other != classes:
            raise ValueError(
                f"{path} lists the classes {classes} but {where} lists {other}: the annotator was edited after it "
                "was saved; fit it again"
            )
    return classes


def _stratified_holdout(codes: np.ndarray, candidates: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of each class's candidate cells (at least one of a class with two or more)."""
    held = np.zeros(len(codes), dtype=bool)
    rng = np.random.default_rng([seed, 4])
    for code in np.unique(codes[candidates]):
        rows = np.flatnonzero(candidates & (codes == code))
        n = int(round(fraction * len(rows)))
        if fraction > 0 and len(rows) >= 2:
            n = max(n, 1)
        held[rng.choice(rows, min(n, len(rows) - 1), replace=False)] = True
    return held
