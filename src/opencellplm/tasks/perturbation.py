"""Perturbation prediction on the CellPLM backbone: the mean expression of cells under a genetic perturbation.

No released CellPLM code covers this task; the design is ours (TASKS.md §6) and fits a cell-as-token model.

Design
------
- **A perturbation is a vector in token space.** Gene ``g`` is represented by its row of the backbone's
  pretrained gene-embedding table (``embedder.gene_embedding``), so a gene never perturbed in training
  still has a representation. The row goes through a small network (LayerNorm, Linear, GELU, Linear) and is
  multiplied element-wise by a learned direction vector (knock-down initialised to -1, activation to +1);
  the genes of a combination sum. No pairwise term: combinations are additive in token space, and only
  the backbone's non-linearity can make their effects non-additive in expression (cut for time; the
  additive baseline is the fair comparison).
- **Where it enters.** The vector is added to every cell token of a set of control cells after the
  embedder and before the transformer encoder, rather than as a shift of the latent: the cells of the set
  then attend to each other in their perturbed state, and the pretrained encoder, latent layer and NB
  decoder all stay on the path (a latent shift would skip the part of the network that pretraining shaped
  most). A knocked-down gene (``":down"``) is also set to 0 in the input counts; perturbed genes always
  stay in the input columns.
- **A residual on the decoder's output.** The perturbation vector also reaches each output gene's log NB mean
  directly: a bilinear readout of the vector with that gene's (normalised) pretrained embedding row, plus a
  free per-gene readout vector and a per-gene, per-direction shared effect (the part of the change common to
  every perturbation, which a new gene inherits). Without it the change can only lie in the span that the
  pretrained decoder reaches from its small latent, which was shaped by unperturbed cells; with the token path
  alone, a first version fitted neither the training nor the validation perturbations better than "no
  change" in a few hundred steps. The readout of gene ``g`` for the perturbation vector ``s`` is
  ``(W row_g + u_g) . s / sqrt(d) + sum over perturbed genes of b[g, direction]``.
- **"No change" exactly at the start.** The last layer of the perturbation network and the shared effect
  ``b`` start at zero (so the vector, its readout and the shared effect are all zero), and the
  predicted condition mean is the *observed* control mean plus the difference between two decodings of the
  same input (control cells, knocked-down genes zeroed): with the perturbation vector and its readout and without,
  each averaged over the cells after log-normalisation. An unfitted predictor therefore predicts the control
  mean to float precision (tested). The zeroed input enters both decodings, so zeroing alone never moves a
  prediction; it acts through the learned vector, on cells whose knocked-down genes read zero as in real
  knocked-down cells. The backbone runs deterministically (no dropout, the latent's posterior mean) during
  fitting too, so that the two decodings share every random draw and their difference is the perturbation's
  effect alone.
- **Loss.** NB negative log-likelihood of randomly paired perturbed cells (control cell ``i`` of the set
  paired with a random cell of the perturbation, as GEARS pairs cells; the NB mean of cell ``i`` under the
  perturbation is scaled to the paired cell's library size) plus ``mean_weight`` times the squared error of
  the predicted condition-mean log-normalised profile (the metrics are on means).
- **Training** uses the shared :class:`~opencellplm.train.Trainer`: AdamW, warm-up then cosine decay,
  gradient clipping, bf16 autocast where available, early stopping on the validation error, best state kept.
  The new perturbation network trains at ``lr``; the pretrained backbone (gene embedding included) at
  ``lr * backbone_lr_scale`` (0.1 by default, as the official fine-tuning recipes treat the embedder), so a
  few hundred steps adapt it without erasing what pretraining learnt. Validation: a seeded share of the
  *training* perturbations is held out and the state with the lowest mean-profile MSE on them is kept
  (the start, i.e. "no change", when training never beats it). Test perturbations are never seen.

What pretraining can and cannot bring
-------------------------------------
Pretrained gene embeddings were learnt from co-expression in unperturbed cells. On real Perturb-seq data
they may carry some knowledge of which genes act together; on the package's simulator, whose regulatory
network is random, they carry none of the simulated regulation, so there pretraining can only help through
the backbone's general structure (how counts map to tokens and back). Published benchmarks
(Ahlmann-Eltze et al. 2024/2025) found no deep model beating the additive model on combinations or the
training-mean and linear baselines on unseen genes; :meth:`PerturbationPredictor.score` runs those
baselines on the same split and seeds, and its result says where CellPLM wins and where it loses.

Labels and genes
----------------
Labels follow :mod:`opencellplm.data.perturbations` (``"ctrl"``, ``"A"``, ``"A+B"``, ``"A:up+B:down"``).
Perturbed genes are vocabulary ids (normalised by the checkpoint's ``gene_id_rule``); a gene outside the
vocabulary is an error naming it, unless ``extend_vocabulary=True`` adds it with a fresh (untrained)
embedding row, which then carries no pretrained knowledge and learns only from that gene's own training
cells. The same route serves a perturbation that is not a gene (e.g. a stimulus, in the smoke test on the
immune control / stimulated pair): it becomes a new vocabulary entry whose row is learnt from scratch.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from torch import nn

from .._lognorm import log_normalize
from .._memory import PeakMemory
from .._sparse import scipy_to_torch_csr
from .._threads import thread_settings
from ..baselines.registry import REGISTRY, baselines_for, run_baseline
from ..data.genes import normalise_gene_ids
from ..data.sets import InputSpec
from ..data.validate import require_anndata
from ..distributions import nb_log_prob
from ..io import CheckpointError
from ..model import CellPLM
from ..module import CellBatch, CellPLMModule
from ..module.losses import LossOutput
from ..module.perturbation import PerturbationModule, predicted_change
from ..train import Distributed, Objective
from ..train.trainer import Autocast, ParamGroup
from ._saved import settings_dataclass
from .base import FineTunedTask, FineTuneRecipe, Precision, resolve_spec
from .result import MethodScore, TaskResult, plain

logger = logging.getLogger(__name__)

FORMAT = "opencellplm-perturbation-predictor"
SETTINGS_FILE = "perturbation.json"
#: Weights of the perturbation network and the control cells a saved predictor predicts from.
STATE_FILE = "perturbation_state.pt"
Direction = Literal["down", "up"]
#: The perturbation baselines, by name (:mod:`opencellplm.baselines.registry`).
BASELINES = tuple(REGISTRY["perturbation"])
METRICS = ("rmse", "rmse_top20", "pearson_delta", "pearson_delta_top20", "direction_accuracy_top20")
GENE_COLUMN = "cellplm_gene_id"
LABEL_COLUMN = "perturbation"


@dataclass(frozen=True)
class PerturbationRecipe(FineTuneRecipe):
    """Fine-tuning settings of a :class:`PerturbationPredictor` (the shared ones are
    :class:`~opencellplm.tasks.base.FineTuneRecipe`'s).

    Attributes
    ----------
    steps, patience, eval_every
        Optimizer steps at most; stop after ``patience`` evaluations without a lower validation MSE.
    lr, backbone_lr_scale
        AdamW rate of the perturbation network; the pretrained backbone trains at ``lr * backbone_lr_scale``
        (0 freezes it).
    warmup_steps, weight_decay, grad_clip
        Linear warm-up then cosine decay; weight decay on matrices; gradient clipping.
    sets_per_step
        (perturbation, control set) pairs per optimizer step.
    max_cells
        Control cells per set (cells of a set attend to each other).
    max_control_cells
        Control cells kept to predict from (a seeded sample when there are more; the observed control mean
        always uses every control cell). A saved predictor stores them.
    mean_weight
        Weight of the squared error of the condition-mean profile beside the per-cell NB likelihood.
    validation_fraction
        Share of the training perturbations held out to pick the best state (none held out below 3).
    validation_sets
        Control sets each validation perturbation is predicted from (fewer is faster).
    hidden_dim
        Width of the perturbation network.
    precision
        ``"auto"`` (bf16 where the hardware has it), ``"bf16"`` or ``"fp32"``.
    seed
        Seeds the validation perturbations, the control sample and sets, the pairing and the order.
    """

    steps: int = 300
    patience: int = 5
    eval_every: int = 20
    lr: float = 3e-3
    backbone_lr_scale: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.01
    grad_clip: float = 2.0
    sets_per_step: int = 4
    max_cells: int = 64
    max_control_cells: int = 512
    mean_weight: float = 30.0
    validation_fraction: float = 0.15
    validation_sets: int = 2
    hidden_dim: int = 128
    precision: Precision = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must lie in (0, 1), got {self.validation_fraction!r}")
        for name in ("max_cells", "max_control_cells", "validation_sets", "hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")


# ---------------------------------------------------------------------------------------------- the data
@dataclass
class ControlCells:
    """The control cells a predictor predicts from: counts over the input genes, their sets, the observed mean."""

    counts: sp.csr_matrix  # (n_control, G_in)
    sets: list[np.ndarray]  # rows of ``counts``
    mean: np.ndarray  # (G_in,) observed mean log-normalised profile over every control cell

    def batch(self, index: int, gene_index: torch.Tensor, zero: np.ndarray, device: torch.device) -> CellBatch:
        """Set ``index`` with the input columns ``zero`` set to 0 (knocked-down genes)."""
        x = self.counts[self.sets[index]]
        if zero.size:
            x = x.tolil(copy=True)
            x[:, zero] = 0
            x = sp.csr_matrix(x)
            x.eliminate_zeros()
        return CellBatch(scipy_to_torch_csr(sp.csr_matrix(x, dtype=np.float32), device), gene_index.to(device))


@dataclass(frozen=True)
class Encoded:
    """One perturbation as the network reads it: vocabulary rows, directions (0 down, 1 up), input columns
    to zero."""

    genes: np.ndarray
    directions: np.ndarray
    zero: np.ndarray


def lognorm_mean(counts: sp.csr_matrix) -> np.ndarray:
    """Mean of ``log1p(counts / total * 1e4)`` over the rows (cells without counts count as zeros)."""
    return np.asarray(log_normalize(sp.csr_matrix(counts, dtype=np.float64)).mean(0)).ravel()


class PerturbationObjective(Objective):
    """NB likelihood of paired perturbed cells + ``mean_weight`` x mean-profile MSE; the mean-profile MSE on the
    validation perturbations picks the best state."""

    monitor = "val_mse"
    objective_name = "nb_nll"

    def __init__(
        self,
        control: ControlCells,
        gene_index: torch.Tensor,
        encoded: dict[str, Encoded],
        perturbed_counts: dict[str, sp.csr_matrix],
        truth: dict[str, np.ndarray],
        train_labels: list[str],
        val_labels: list[str],
        recipe: PerturbationRecipe,
    ):
        self.control, self.gene_index, self.encoded = control, gene_index, encoded
        self.perturbed_counts, self.recipe = perturbed_counts, recipe
        self.truth = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in truth.items()}
        self.control_mean = torch.as_tensor(control.mean, dtype=torch.float32)
        self.train_labels, self.val_labels = train_labels, val_labels

    def global_batch(self, step: int) -> list[tuple[str, int]]:
        rng = np.random.default_rng([self.recipe.seed, 7, step])
        labels = rng.integers(len(self.train_labels), size=self.recipe.sets_per_step)
        sets = rng.integers(len(self.control.sets), size=self.recipe.sets_per_step)
        return [(self.train_labels[i], int(s)) for i, s in zip(labels, sets)]

    def loss(
        self, model: nn.Module, item: tuple[str, int], device: torch.device, autocast: Autocast
    ) -> tuple[LossOutput, int]:
        label, index = item
        code = self.encoded[label]
        batch = self.control.batch(index, self.gene_index, code.zero, device)
        genes, directions = _tensors(code, device)
        with autocast():
            out = model(batch, genes, directions)
        predicted = self.control_mean.to(device) + predicted_change(out)  # (G_in,)
        mse = ((predicted - self.truth[label].to(device)) ** 2).mean()
        cells = self.perturbed_counts[label]
        paired = torch.randint(cells.shape[0], (batch.n_cells,)).numpy()  # seeded by the trainer
        y = torch.as_tensor(cells[paired].toarray(), dtype=torch.float32, device=device)  # (N, G_in)
        perturbed = out.perturbed.float()
        mu = perturbed / perturbed.sum(1, keepdim=True) * y.sum(1, keepdim=True)
        nll = -nb_log_prob(y, mu, out.dispersion.float()).mean()
        total = nll + self.recipe.mean_weight * mse
        return LossOutput(total=total, latent=torch.zeros((), device=device), objective=nll), batch.n_cells

    def evaluate(self, module: nn.Module, world: Distributed, autocast: Autocast) -> dict[str, float]:
        sets = list(range(min(self.recipe.validation_sets, len(self.control.sets))))
        codes = [self.encoded[label] for label in self.val_labels]
        predicted = predict_profiles(module, self.control, self.gene_index, codes, sets, world.device)
        truth = np.stack([self.truth[label].numpy() for label in self.val_labels])
        return {"val_mse": float(((predicted - truth) ** 2).mean())}

    def param_groups(self, module: nn.Module) -> list[ParamGroup]:
        backbone = list(module.backbone.parameters())
        own = [p for name, p in module.named_parameters() if not name.startswith("backbone.")]
        groups = [ParamGroup("perturbation", own)]
        if self.recipe.backbone_lr_scale > 0:
            groups.append(ParamGroup("backbone", backbone, self.recipe.backbone_lr_scale))
        return groups


def _tensors(code: Encoded, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    genes = torch.as_tensor(code.genes, dtype=torch.long, device=device)
    return genes, torch.as_tensor(code.directions, dtype=torch.long, device=device)


@torch.no_grad()
def predict_profiles(
    module: PerturbationModule,
    control: ControlCells,
    gene_index: torch.Tensor,
    codes: Sequence[Encoded],
    sets: Sequence[int],
    device: torch.device,
) -> np.ndarray:
    """(len(codes), G_in) predicted mean log-normalised profiles: the observed control mean plus the predicted
    change averaged over the control ``sets`` (weighted by their cells). Always fp32."""
    was_training = module.training
    module.eval()
    try:
        out = np.empty((len(codes), len(control.mean)), dtype=np.float64)
        weights = np.array([len(control.sets[s]) for s in sets], dtype=np.float64)
        weights /= weights.sum()
        for i, code in enumerate(codes):
            if code.genes.size == 0:
                out[i] = control.mean
                continue
            genes, directions = _tensors(code, device)
            change = np.zeros(len(control.mean))
            for weight, s in zip(weights, sets):
                batch = control.batch(s, gene_index, code.zero, device)
                change += weight * predicted_change(module(batch, genes, directions)).double().cpu().numpy()
            out[i] = control.mean + change
    finally:
        module.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------- results
@dataclass
class PerturbationFitSummary:
    """What :meth:`PerturbationPredictor.fit` did. ``start_val_mse`` is the validation MSE of "no change"
    (the starting weights); ``kept`` says which weights were kept; ``n_unlabelled_cells``: cells left out because
    their label was missing (NaN, None, empty)."""

    pretrained: bool
    n_control_cells: int
    n_control_cells_used: int
    n_genes: int
    train_labels: list[str]
    validation_labels: list[str]
    validation: str
    steps: int
    start_val_mse: float
    best_val_mse: float | None
    kept: Literal["fine-tuned", "start"]
    seconds: float
    stopped_by: str | None = None
    n_unlabelled_cells: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class MethodRun:
    """One method on one seed's split: where its time and memory went.

    ``fit_seconds`` / ``predict_seconds``: the two parts, where a method has them apart (CellPLM, GEARS); a
    baseline that is one call is timed as ``fit_seconds`` (``predict_seconds`` None). ``peak_rss_increase_mb``:
    how far the process's resident memory rose above its level at the start of the method (sampled every 20 ms, see
    :class:`~opencellplm._memory.PeakMemory`). ``peak_gpu_mb``: ``torch.cuda.max_memory_allocated`` on GPU,
    else None.
    """

    seed: int
    method: str
    fit_seconds: float
    predict_seconds: float | None
    peak_rss_increase_mb: float
    peak_gpu_mb: float | None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PerturbationResult(TaskResult):
    """CellPLM and the baselines on the same splits and seeds (see :meth:`PerturbationPredictor.score`): a
    :class:`~opencellplm.tasks.result.TaskResult` whose :attr:`methods` hold every test perturbation's scores,
    averaged per seed and then over the seeds.

    Attributes
    ----------
    simulated
        The data came from the simulator (``uns['simulation']['simulated']``): every figure is "simulated".
    seeds
        The seeds, one split each.
    scores
        One row per (seed, method, test perturbation): the five metrics and its group.
    runs
        One :class:`MethodRun` per (seed, method): wall times and peak memory.
    splits
        Per seed: ``train``, ``test`` and ``groups`` (test label -> group).
    fits
        Per seed, what CellPLM's fit did (validation MSE at the start and at the best state, steps).
    checkpoint, recipe, spec, version
        The base model's identity (name, sha256), the fine-tuning recipe, the input settings, the package version.
    n_cells, n_genes, control
        Size of the scored data (genes: those in the model's vocabulary) and the control label.
    n_unlabelled_cells
        Cells left out because their perturbation label was missing (NaN, None, empty).
    """

    simulated: bool
    seeds: list[int]
    scores: pd.DataFrame
    runs: list[MethodRun]
    splits: dict[int, dict[str, Any]]
    fits: dict[int, dict[str, Any]]
    checkpoint: dict[str, Any]
    recipe: dict[str, Any]
    spec: dict[str, Any]
    version: str
    n_cells: int
    n_genes: int
    control: str
    n_unlabelled_cells: int = 0
    threads: dict[str, Any] = field(default_factory=thread_settings)  # the CPU threads in force when scored
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def methods(self) -> list[MethodScore]:
        """Per method: the five metrics over every test perturbation (group ``"all"`` of :meth:`to_frame`), the
        mean seconds and peak memory over seeds, and each seed's run ``params`` (``runs``; with CellPLM's fine-tuning
        ``steps`` per seed)."""
        table = self.to_frame().xs("all", level="group")
        out = []
        for name, row in table.iterrows():
            name = str(name)
            steps = [self.fits[seed][name]["steps"] for seed in self.seeds if name in self.fits.get(seed, {})]
            fit, predict = plain(row.get("fit_seconds")), plain(row.get("predict_seconds"))
            out.append(
                MethodScore(
                    name,
                    {metric: plain(row[metric]) for metric in METRICS},
                    seconds=float(np.nansum([row.get("fit_seconds", np.nan), row.get("predict_seconds", np.nan)])),
                    fit_seconds=fit,
                    predict_seconds=predict,
                    params={"runs": [r.params for r in self.runs if r.method == name]}
                    | ({"steps": steps} if steps else {}),
                    peak_mb=plain(row.get("peak_rss_increase_mb")),
                )
            )
        return out

    def to_frame(self) -> pd.DataFrame:
        """Per method and group (and ``"all"``): each metric's mean over seeds and its standard deviation
        (``*_std``, NaN with one seed) of the per-seed group means, the number of test perturbations per seed
        and the mean fit / predict seconds and peak memory; a ``data`` column says ``"simulated"`` or ``"real"``."""
        frame = pd.concat([self.scores, self.scores.assign(group="all")])
        per_seed = frame.groupby(["method", "group", "seed"], sort=False)[list(METRICS)].mean()
        counts = frame.groupby(["method", "group", "seed"], sort=False).size().groupby(["method", "group"]).mean()
        mean = per_seed.groupby(["method", "group"], sort=False).mean()
        std = per_seed.groupby(["method", "group"], sort=False).std(ddof=1).add_suffix("_std")
        table = mean.join(std)
        table["n_perturbations"] = counts
        runs = pd.DataFrame([asdict(r) for r in self.runs]).drop(columns=["params", "seed"])
        runs = runs.astype({"predict_seconds": float, "peak_gpu_mb": float})  # None -> NaN
        timing = runs.groupby("method").mean(numeric_only=True)
        table = table.join(timing, on="method")
        table.insert(0, "data", "simulated" if self.simulated else "real")
        order = [m for m in dict.fromkeys(self.scores["method"])]
        table = table.reset_index()
        table["method"] = pd.Categorical(table["method"], order, ordered=True)
        return table.sort_values(["method", "group"]).set_index(["method", "group"])

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready."""
        return {
            "simulated": self.simulated,
            "seeds": list(self.seeds),
            "scores": self.scores.to_dict(orient="records"),
            "runs": [asdict(r) for r in self.runs],
            "splits": {str(k): v for k, v in self.splits.items()},
            "fits": {str(k): v for k, v in self.fits.items()},
            "checkpoint": self.checkpoint,
            "recipe": self.recipe,
            "spec": self.spec,
            "version": self.version,
            "n_cells": self.n_cells,
            "n_genes": self.n_genes,
            "control": self.control,
            "n_unlabelled_cells": self.n_unlabelled_cells,
            "threads": self.threads,
        }


# ---------------------------------------------------------------------------------------------- the task
class PerturbationPredictor(FineTunedTask):
    """Predict the mean expression profile of cells under genetic perturbations (see the module docstring).

    Build one from a pretrained model (:meth:`from_pretrained`) or the same architecture with fresh weights
    (:meth:`from_scratch`), :meth:`fit` it on a Perturb-seq AnnData, then :meth:`predict` any label whose
    genes are in the vocabulary (seen in training or not), :meth:`score` it against the baselines,
    :meth:`save` and :meth:`load`.

    Examples
    --------
    >>> predictor = PerturbationPredictor.from_pretrained("cellplm-small")          # doctest: +SKIP
    >>> predictor.fit(adata, perturbation_key="perturbation", control="ctrl")      # doctest: +SKIP
    >>> predictor.predict(["KLF1", "KLF1+CEBPA", "GATA1:up"])                       # doctest: +SKIP
    >>> predictor.score(adata, seeds=(0, 1, 2)).to_frame()                          # doctest: +SKIP
    """

    recipe_type = PerturbationRecipe
    noun = "predictor"
    settings_file, format = SETTINGS_FILE, FORMAT
    needs_decoder = "predict perturbations (they are decoded as expression)"
    extra_file_names = (STATE_FILE,)
    recipe: PerturbationRecipe
    summary: PerturbationFitSummary | None
    module: PerturbationModule | None

    def __init__(self, base: CellPLM, *, pretrained: bool, recipe: PerturbationRecipe | None = None):
        super().__init__(base, pretrained=pretrained, recipe=recipe)
        self.control_cells: ControlCells | None = None
        self.gene_index: torch.Tensor | None = None
        self.var_names: list[str] = []
        self.control, self.default_direction, self.perturbation_key = "ctrl", "down", LABEL_COLUMN
        self._loaded = False  # read by load(): its backbone may have seen any perturbation

    # ------------------------------------------------------------------------------------------- fit
    def fit(
        self,
        adata: AnnData,
        *,
        perturbation_key: str = LABEL_COLUMN,
        control: str = "ctrl",
        default_direction: Direction = "down",
        labels: Sequence[str] | None = None,
        extend_vocabulary: bool = False,
        device: str | None = None,
        spec: InputSpec | None = None,
        **spec_fields: Any,
    ) -> PerturbationPredictor:
        """Fine-tune on the perturbed and control cells of ``adata`` (from the base weights each time).

        Parameters
        ----------
        adata
            Raw counts (integers); ``obs[perturbation_key]`` holds each cell's perturbation label. Cells whose
            label is missing (NaN, None, empty, ``"nan"``) are left out, neither perturbed nor control cells, and
            counted (a warning, :attr:`PerturbationFitSummary.n_unlabelled_cells`).
        perturbation_key
            ``obs`` column of the labels.
        control
            The label of control cells.
        default_direction
            Direction of a gene written without ``:down`` / ``:up``.
        labels
            Train only on these perturbation labels (default: every non-control label); the cells of other
            labels are ignored.
        extend_vocabulary
            Add perturbed genes outside the model's vocabulary with fresh embedding rows (default: an error
            naming them).
        device
            Torch device (default: the model's).
        spec, **spec_fields
            An :class:`~opencellplm.data.InputSpec` and/or its fields as keywords (``layer``, ``gene_key``,
            ``sample_key``: control cells of one sample form the sets).

        Returns
        -------
        PerturbationPredictor
            ``self``, with :attr:`summary`.
        """
        from ..data.perturbations import parse_labels

        started = time.perf_counter()
        require_anndata(adata)
        recipe = self.recipe
        if perturbation_key not in adata.obs:
            raise KeyError(
                f"obs column {perturbation_key!r} (perturbation labels) not found; adata.obs has "
                f"{list(adata.obs.columns)}"
            )
        values, n_unlabelled = _label_column(adata, perturbation_key)
        found = list(dict.fromkeys(values[values != ""]))
        parsed = parse_labels(found, control=control, default_direction=default_direction)
        values, found = _merge_equivalent(values, found, parsed, control)
        is_control = values == control
        if not is_control.any():
            raise ValueError(
                f"no control cells: obs[{perturbation_key!r}] has no cell labelled {control!r} (the control label); "
                f"labels found: {found[:8]}{' ...' if len(found) > 8 else ''}; pass control= with the label of "
                "unperturbed cells"
            )
        perturbed = [label for label in found if label != control and parsed[label]]
        if labels is not None:
            missing = [label for label in labels if label not in parsed]
            if missing:
                raise ValueError(f"labels {missing[:5]} not found in obs[{perturbation_key!r}]")
            perturbed = [label for label in dict.fromkeys(labels) if label != control and parsed[label]]
        if not perturbed:
            raise ValueError(f"no perturbed cells to train on in obs[{perturbation_key!r}] (only {control!r})")

        base = CellPLM(
            self.base.module, self.base.genes, meta=self.base.meta, source=self.base.source, device=self.base.device
        )
        genes_needed = sorted({p.gene for label in perturbed for p in parsed[label]})
        _check_vocabulary(base, genes_needed, extend_vocabulary)
        input_spec = resolve_spec(spec, spec_fields)
        sets = base.cell_sets(adata, replace(input_spec, spatial_key=None), require_counts=True, warn_stacklevel=3)
        columns = sets.report.alignment.columns
        gene_index = torch.as_tensor(sets.report.alignment.gene_index, dtype=torch.long)
        counts = sets.counts()
        control_cells = _control_cells(counts, is_control, adata, input_spec, recipe)
        encoded = {label: _encode(base, parsed[label], gene_index) for label in perturbed}
        rows = {label: np.flatnonzero(values == label) for label in perturbed}
        perturbed_counts = {label: counts[r] for label, r in rows.items()}
        truth = {label: lognorm_mean(c) for label, c in perturbed_counts.items()}
        train_labels, val_labels, validation = _validation_split(perturbed, recipe)

        if self.pretrained:
            backbone = base.module
            torch.manual_seed(recipe.seed)
            module = PerturbationModule(_copy(backbone), hidden_dim=recipe.hidden_dim)
        else:
            torch.manual_seed(recipe.seed)
            module = PerturbationModule(CellPLMModule(base.config), hidden_dim=recipe.hidden_dim)
        objective = PerturbationObjective(
            control_cells, gene_index, encoded, perturbed_counts, truth, train_labels, val_labels, recipe
        )
        # The start predicts no change (the network's last layer is zero): fine-tuning must beat that.
        result = self._fine_tune(module, objective, device=device or base.device, compete_with_start=True)
        best = result.best
        self.base = base
        self.module = module.eval()
        self.control_cells, self.gene_index = control_cells, gene_index
        self.var_names = [str(v) for v in np.asarray(adata.var_names)[columns]]
        self.control, self.default_direction, self.perturbation_key = control, default_direction, perturbation_key
        self.spec = input_spec
        self.summary = PerturbationFitSummary(
            pretrained=self.pretrained,
            n_control_cells=int(is_control.sum()),
            n_control_cells_used=control_cells.counts.shape[0],
            n_genes=len(columns),
            train_labels=train_labels,
            validation_labels=val_labels,
            validation=validation,
            steps=result.steps,
            start_val_mse=result.start,
            best_val_mse=best,
            kept=result.kept,
            seconds=round(time.perf_counter() - started, 2),
            stopped_by=result.stopped_by,
            n_unlabelled_cells=n_unlabelled,
            history=result.history,
        )
        logger.info(
            "perturbation predictor fitted on %d perturbations: validation MSE %.5f (no change) -> best %s; kept %s",
            len(perturbed),
            result.start,
            "none" if best is None else f"{best:.5f}",
            result.kept,
        )
        return self

    # --------------------------------------------------------------------------------------- predict
    def predict(self, labels: Sequence[str] | str) -> pd.DataFrame:
        """Predicted mean log-normalised profiles (``log1p(counts / total * 1e4)``, averaged over cells).

        Parameters
        ----------
        labels
            Perturbation labels (the grammar of :mod:`opencellplm.data.perturbations`); their genes must be in
            the vocabulary, perturbed in training or not. The control label gives the observed control mean.

        Returns
        -------
        pandas.DataFrame
            Index: the labels as given; columns: the training data's genes that are in the model's vocabulary.
        """
        from ..data.labels import is_missing_label
        from ..data.perturbations import PerturbationLabelError, parse_labels

        module = self._require_module()
        labels = [labels] if isinstance(labels, str) else list(labels)
        missing = [label for label in labels if is_missing_label(label)]
        if missing:  # a row per label is asked for: a missing one cannot be left out quietly
            raise PerturbationLabelError(
                f"{len(missing)} of the {len(labels)} labels to predict are missing (NaN, None, empty or the text of "
                f"a missing value): {missing[:5]}; give a perturbation label for each"
            )
        labels = [str(label) for label in labels]
        parsed = parse_labels(labels, control=self.control, default_direction=self.default_direction)
        _check_vocabulary(self.base, sorted({p.gene for ps in parsed.values() for p in ps}), False)
        codes = [_encode(self.base, parsed[label], self.gene_index) for label in labels]
        control = self.control_cells
        device = next(module.parameters()).device
        profiles = predict_profiles(module, control, self.gene_index, codes, range(len(control.sets)), device)
        return pd.DataFrame(profiles, index=pd.Index(labels, name="perturbation"), columns=self.var_names)

    def _require_module(self) -> PerturbationModule:
        if self.module is None or self.control_cells is None:
            raise ValueError("this predictor is not fitted; call fit() first, or load() a saved one")
        return self.module

    # ----------------------------------------------------------------------------------------- score
    def score(
        self,
        adata: AnnData,
        *,
        seeds: Sequence[int] | int = (0, 1, 2),
        perturbation_key: str = LABEL_COLUMN,
        control: str = "ctrl",
        default_direction: Direction = "down",
        baselines: Sequence[str] = BASELINES,
        from_scratch: bool = False,
        extend_vocabulary: bool = False,
        n_top: int = 20,
        device: str | None = None,
        spec: InputSpec | None = None,
        **spec_fields: Any,
    ) -> PerturbationResult:
        """CellPLM against the baselines on GEARS-style splits (TASKS.md §6), one per seed.

        Per seed: :func:`gears_split` of the perturbations (test: unseen single genes and combinations with
        0, 1 or 2 genes seen alone); CellPLM fitted on the training perturbations only, from this predictor's
        base weights (never weights that saw the test perturbations) with the recipe's seed set to the split's;
        the baselines on the same training means; every method scored per test perturbation on mean profiles
        (:func:`~opencellplm.metrics.perturbation_scores`: RMSE all genes and top-20 DE genes, Pearson delta all
        and top-20, direction accuracy of the top 20). Only the genes in the model's vocabulary are scored.
        ``self`` and ``adata`` are unchanged. A predictor read by :meth:`load` is refused (its backbone may have
        seen the test perturbations): score a predictor made by :meth:`from_pretrained`. Labels naming the same
        perturbation (``"A"`` and ``"A+ctrl"``) count as one; perturbations with fewer than 2 cells are left out.
        Time and memory of each method are in ``runs`` (peak memory as the rise of the resident memory, sampled;
        on CUDA also ``torch.cuda.max_memory_allocated``).

        Parameters
        ----------
        adata
            Raw counts with ``obs[perturbation_key]``.
        seeds
            One split (and fit) per seed.
        baselines
            Among ``"no_change"``, ``"training_mean"``, ``"additive"``, ``"linear"``.
        from_scratch
            Add CellPLM's architecture trained from scratch on each split (a pretrained predictor's rows are
            ``cellplm``; a predictor made by :meth:`from_scratch` scores only ``cellplm_from_scratch``).
        n_top
            Number of top differentially expressed genes (t-test against control) of the top-k metrics.
        spec, **spec_fields
            An :class:`~opencellplm.data.InputSpec` and/or its fields as keywords, as in :meth:`fit`.
        """
        from .. import __version__
        from ..data.perturbations import parse_labels
        from ..metrics import perturbation as perturbation_metrics

        require_anndata(adata)
        seeds = [int(seeds)] if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
        chosen = baselines_for("perturbation", baselines)
        if self._loaded:
            raise ValueError(
                "this predictor was loaded with a fine-tuned backbone, which may have seen the perturbations score "
                "holds out; score a predictor made by PerturbationPredictor.from_pretrained (or from_scratch)"
            )
        if perturbation_key not in adata.obs:
            raise KeyError(f"obs column {perturbation_key!r} not found; adata.obs has {list(adata.obs.columns)}")
        input_spec = resolve_spec(spec, spec_fields)
        sets = self.base.cell_sets(adata, replace(input_spec, spatial_key=None), require_counts=True, warn_stacklevel=3)
        columns = sets.report.alignment.columns
        counts = sets.counts()
        values, n_unlabelled = _label_column(adata, perturbation_key)
        found = list(dict.fromkeys(values[values != ""]))
        parsed = parse_labels(found, control=control, default_direction=default_direction)
        values, found = _merge_equivalent(values, found, parsed, control)
        sizes = pd.Series(values).value_counts()
        too_small = [label for label in found if label != control and sizes[label] < 2]
        if too_small:  # the top-DE t-test needs two cells
            logger.warning(
                "%d perturbation(s) with fewer than 2 cells left out of the score: %s", len(too_small), too_small[:5]
            )
            found = [label for label in found if label not in too_small]
            values = np.where(np.isin(values, too_small), "", values)
        if control not in found:
            raise ValueError(
                f"no control cells: obs[{perturbation_key!r}] has no cell labelled {control!r}; labels found: "
                f"{found[:8]}{' ...' if len(found) > 8 else ''}"
            )
        ids = adata.var_names if input_spec.gene_key is None else adata.var[input_spec.gene_key].astype(str)
        gene_ids = np.asarray(ids)[columns].astype(str)
        # profiles are indexed by the ids labels name genes with, so the baselines find the perturbed genes' columns
        var = pd.DataFrame({GENE_COLUMN: gene_ids}, index=pd.Index(gene_ids))
        obs = pd.DataFrame({perturbation_key: values}, index=adata.obs_names.copy())
        if input_spec.sample_key is not None:
            obs[input_spec.sample_key] = adata.obs[input_spec.sample_key].to_numpy()
        kept = values != ""
        work = AnnData(sp.csr_matrix(counts, dtype=np.float32), obs=obs, var=var)[kept].copy()
        values = values[kept]
        work_spec = replace(input_spec, layer=None, gene_key=GENE_COLUMN, spatial_key=None).to_dict()

        means = perturbation_metrics.condition_means(work, values)
        control_profile = means.loc[control]
        top_de = perturbation_metrics.top_de_genes(work, values, control=control, n_top=n_top)
        perturbed_parsed = {label: parsed[label] for label in found if label != control and parsed[label]}
        from ..data.perturbations import gears_split as split_function

        simulation = adata.uns.get("simulation", {})
        simulated = bool(isinstance(simulation, dict) and simulation.get("simulated", False))

        frames, runs, splits, fits = [], [], {}, {}
        skipped: dict[str, str] = {}
        fit_options = {
            "perturbation_key": perturbation_key,
            "control": control,
            "default_direction": default_direction,
            "extend_vocabulary": extend_vocabulary,
            "device": device,
        } | work_spec
        base = self.base
        if extend_vocabulary:  # every perturbed gene, test ones included, gets its row before any split
            base = CellPLM(
                self.base.module, self.base.genes, meta=self.base.meta, source=self.base.source, device=self.base.device
            )
            _check_vocabulary(base, sorted({p.gene for genes in perturbed_parsed.values() for p in genes}), True)
        variants = [("cellplm", True)] if self.pretrained else []
        if from_scratch or not self.pretrained:
            variants.append(("cellplm_from_scratch", False))
        for seed in seeds:
            split = split_function(perturbed_parsed, seed=seed)
            train, test, groups = list(split.train), list(split.test), dict(split.groups)
            splits[seed] = {"train": train, "test": test, "groups": groups}
            truth = means.loc[test]
            train_means = means.loc[[control, *train]]
            outcomes: list[tuple[str, pd.DataFrame, MethodRun]] = []
            for name, pretrained in variants:
                predictor = PerturbationPredictor(base, pretrained=pretrained, recipe=replace(self.recipe, seed=seed))
                fitted = _measure(partial(predictor.fit, work, labels=train, **fit_options))
                predicted = _measure(partial(predictor.predict, test))
                summary = predictor.summary
                fits.setdefault(seed, {})[name] = {k: v for k, v in asdict(summary).items() if k != "history"}
                run = MethodRun(
                    seed,
                    name,
                    fitted.seconds,
                    predicted.seconds,
                    max(fitted.rss_mb, predicted.rss_mb),
                    _max_or_none(fitted.gpu_mb, predicted.gpu_mb),
                    {"kept": summary.kept, "steps": summary.steps},
                )
                # The predicted change, on the control profile the baselines and metrics use (the same cells; this
                # only removes float rounding between two ways of summing, so that zero change scores as no change).
                change = predicted.value.to_numpy() - predictor.control_cells.mean
                prediction = pd.DataFrame(control_profile.to_numpy() + change, index=test, columns=means.columns)
                outcomes.append((name, prediction, run))
            train_cells = work[np.isin(values, [control, *train])]  # a view: the packaged baselines copy it
            for name, baseline in chosen.items():
                gpu_before = _reset_gpu_peak()
                result, why = run_baseline(
                    baseline,
                    train_means,
                    perturbed_parsed,
                    test,
                    control=control,
                    seed=seed,
                    train_cells=train_cells,
                    labels_key=perturbation_key,
                )
                if why is not None:
                    skipped[name] = why
                    logger.warning("baseline %s skipped: %s", name, why)
                    continue
                fit_s, predict_s = (None if t is None else round(t, 3) for t in result.timing())
                params = dict(result.params)
                run = MethodRun(seed, name, fit_s, predict_s, result.peak_mb, _gpu_peak(gpu_before), params)
                outcomes.append((name, result.prediction, run))
            for name, prediction, run in outcomes:
                scores = perturbation_metrics.perturbation_scores(
                    prediction.loc[test, means.columns], truth, control_profile, top_de, groups=groups
                )
                frame = scores.per_perturbation.copy()
                frame.insert(0, "perturbation", frame.index.astype(str))
                frame.insert(0, "method", name)
                frame.insert(0, "seed", seed)
                frames.append(frame.reset_index(drop=True))
                runs.append(run)
                logger.info("seed %d %s: %s", seed, name, frame[list(METRICS)].mean().round(4).to_dict())
        return PerturbationResult(
            simulated=simulated,
            seeds=seeds,
            scores=pd.concat(frames, ignore_index=True),
            runs=runs,
            splits=splits,
            fits=fits,
            checkpoint={k: v for k, v in self.base.source.items() if v is not None},
            recipe=asdict(self.recipe),
            spec=input_spec.to_dict(),
            version=__version__,
            n_cells=adata.n_obs,
            n_genes=len(columns),
            control=control,
            n_unlabelled_cells=n_unlabelled,
            skipped=skipped,
        )

    # ------------------------------------------------------------------------------------- save / load
    # save() writes the fitted predictor: the backbone (our checkpoint format, ``model/``), the perturbation network
    # and the control cells it predicts from (``perturbation_state.pt``) and its settings (``perturbation.json``).
    def _settings(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "control": self.control,
            "default_direction": self.default_direction,
            "perturbation_key": self.perturbation_key,
            "var_names": self.var_names,
        }

    def _saved_module(self) -> CellPLMModule:
        return self._require_module().backbone

    def _extra_files(self) -> dict[str, Callable[[Path], None]]:
        module, control = self._require_module(), self.control_cells
        own = {k: v for k, v in module.state_dict().items() if not k.startswith("backbone.")}
        state = {
            "network": own,
            "gene_index": self.gene_index,
            "control_data": torch.as_tensor(control.counts.data, dtype=torch.float32),
            "control_indices": torch.as_tensor(control.counts.indices, dtype=torch.long),
            "control_indptr": torch.as_tensor(control.counts.indptr, dtype=torch.long),
            "control_shape": torch.as_tensor(control.counts.shape, dtype=torch.long),
            "control_mean": torch.as_tensor(control.mean, dtype=torch.float64),
            "set_sizes": torch.as_tensor([len(s) for s in control.sets], dtype=torch.long),
            "set_rows": torch.as_tensor(np.concatenate(control.sets), dtype=torch.long),
        }
        return {STATE_FILE: lambda path: torch.save(state, path)}

    @classmethod
    def _check_saved(cls, directory: Path, settings: dict[str, Any], module: CellPLMModule, meta: dict) -> None:
        path = directory / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; is {directory} a saved perturbation predictor?")

    def _restore(self, directory: Path, settings: dict[str, Any]) -> None:
        path, settings_path = directory / STATE_FILE, directory / SETTINGS_FILE
        state = _read_state(path)
        spec = settings_dataclass(settings_path, settings, "spec", InputSpec)
        module = PerturbationModule(self.base.module, hidden_dim=self.recipe.hidden_dim)
        missing, unexpected = module.load_state_dict(state["network"], strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit the perturbation network: missing {missing}, unexpected {unexpected}"
            )
        shape = tuple(int(v) for v in state["control_shape"])
        arrays = (state["control_data"], state["control_indices"], state["control_indptr"])
        counts = sp.csr_matrix(tuple(a.numpy() for a in arrays), shape)
        sets = np.split(state["set_rows"].numpy(), np.cumsum(state["set_sizes"].numpy())[:-1])
        self.module = module.to(self.base.device).eval()
        self.control_cells = ControlCells(counts, list(sets), state["control_mean"].numpy())
        self.gene_index = state["gene_index"]
        self.var_names = list(settings["var_names"])
        self.control = settings["control"]
        self.default_direction = settings["default_direction"]
        self.perturbation_key = settings["perturbation_key"]
        self.spec = spec
        if settings.get("fit"):
            self.summary = PerturbationFitSummary(**settings["fit"])
        self._loaded = True


predictor_problems = PerturbationPredictor.problems


# --------------------------------------------------------------------------------------------- helpers
_STATE_KEYS = (
    "network",
    "gene_index",
    "control_data",
    "control_indices",
    "control_indptr",
    "control_shape",
    "control_mean",
    "set_sizes",
    "set_rows",
)


def _read_state(path: Path) -> dict[str, Any]:
    """The tensors of a saved ``perturbation_state.pt``, read without unpickling any object (a file holding other
    pickled objects is refused as untrusted, naming it)."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(f"cannot read {path} as a perturbation predictor's state: it is not a torch file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        raise CheckpointError(
            f"{path} is not trusted: it holds pickled objects other than tensors"
            + (f" (it calls {named.group(1)})" if named else "")
            + ", which a perturbation predictor's state never holds, so it was not loaded; it was not written by "
            "this package or was altered: refit the predictor (perturb fit)"
        ) from None
    except Exception as err:  # a truncated archive, ...
        raise CheckpointError(f"cannot read {path} as a perturbation predictor's state: {err}") from None
    missing = [key for key in _STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a perturbation predictor's state: it lacks {missing}")
    return state


def _copy(module: CellPLMModule) -> CellPLMModule:
    copy = CellPLMModule(module.config)
    copy.load_state_dict(module.state_dict())
    return copy.to(next(module.parameters()).device)


def _check_vocabulary(model: CellPLM, genes: Sequence[str], extend: bool) -> None:
    """Refuse (or, with ``extend``, add to ``model``) perturbed genes outside the vocabulary."""
    known = set(model.genes)
    normalised = normalise_gene_ids(genes, model.gene_id_rule, model.gene_aliases)
    missing = [g for g, n in zip(genes, normalised) if n not in known]
    if not missing:
        return
    if extend:
        logger.warning(
            "%d perturbed genes are not in the vocabulary (%s): added with fresh, untrained embedding rows",
            len(missing),
            ", ".join(missing[:5]),
        )
        model.extend_vocabulary(normalise_gene_ids(missing, model.gene_id_rule, model.gene_aliases))
        return
    others = f" and {len(missing) - 5} others" if len(missing) > 5 else ""
    raise ValueError(
        f"perturbed genes not in the model's vocabulary ({len(model.genes)} genes, rule "
        f"{model.gene_id_rule!r}): {missing[:5]}{others}; give vocabulary ids, or pass extend_vocabulary=True "
        "(--extend-vocabulary) to add them with fresh, untrained embedding rows"
    )


def _encode(model: CellPLM, perturbations: Sequence[Any], gene_index: torch.Tensor) -> Encoded:
    """Vocabulary rows, directions and the input columns to zero (knocked-down genes that are measured)."""
    row_of = {g: i for i, g in enumerate(model.genes)}
    rows = [
        row_of[g] for g in normalise_gene_ids([p.gene for p in perturbations], model.gene_id_rule, model.gene_aliases)
    ]
    directions = [0 if p.direction == "down" else 1 for p in perturbations]
    column_of = {int(r): c for c, r in enumerate(gene_index.tolist())}
    zero = [column_of[r] for r, d in zip(rows, directions) if d == 0 and r in column_of]
    return Encoded(np.asarray(rows, dtype=np.int64), np.asarray(directions, dtype=np.int64), np.asarray(zero, int))


def _control_cells(
    counts: sp.csr_matrix, is_control: np.ndarray, adata: AnnData, spec: InputSpec, recipe: PerturbationRecipe
) -> ControlCells:
    """The control cells to predict from (a seeded sample of ``max_control_cells``), cut into sets of
    ``max_cells`` within samples; the observed mean over every control cell."""
    rows = np.flatnonzero(is_control)
    mean = lognorm_mean(counts[rows])
    nonempty = np.asarray(counts[rows].sum(1)).ravel() > 0
    rows = rows[nonempty]
    if rows.size == 0:
        raise ValueError("every control cell has zero counts in the model's genes")
    rng = np.random.default_rng([recipe.seed, 3])
    if rows.size > recipe.max_control_cells:
        rows = np.sort(rng.choice(rows, recipe.max_control_cells, replace=False))
    samples = np.zeros(rows.size, dtype=int)
    if spec.sample_key is not None:
        samples = pd.factorize(adata.obs[spec.sample_key].to_numpy()[rows])[0]
    sets = []
    for sample in np.unique(samples):
        members = rng.permutation(np.flatnonzero(samples == sample))
        n_sets = math.ceil(members.size / recipe.max_cells)
        sets.extend(np.sort(chunk) for chunk in np.array_split(members, n_sets))
    return ControlCells(sp.csr_matrix(counts[rows], dtype=np.float32), sets, mean)


def _validation_split(labels: list[str], recipe: PerturbationRecipe) -> tuple[list[str], list[str], str]:
    """Training and validation perturbations; below 3 perturbations, validation uses the training ones."""
    if len(labels) < 3:
        return list(labels), list(labels), "training perturbations (fewer than 3: none held out)"
    n_val = max(1, round(recipe.validation_fraction * len(labels)))
    rng = np.random.default_rng([recipe.seed, 11])
    held = set(rng.choice(sorted(labels), n_val, replace=False).tolist())
    return [x for x in labels if x not in held], [x for x in labels if x in held], "held-out training perturbations"


@dataclass
class _Measured:
    value: Any
    seconds: float
    rss_mb: float
    gpu_mb: float | None


def _label_column(adata: AnnData, key: str) -> tuple[np.ndarray, int]:
    """The labels of ``obs[key]`` as text, ``""`` for cells whose label is missing (NaN, None, empty, ``"nan"``):
    those cells are left out (neither perturbed nor control), counted and logged, never parsed as a gene."""
    from ..data.labels import label_values

    values, missing = label_values(adata.obs[key])
    n_missing = int(missing.sum())
    if n_missing:
        logger.warning(
            "%d of %d cells have no perturbation label in obs[%r] (NaN, None, empty or 'nan'), e.g. %s: they are "
            "left out (neither perturbed nor control cells)",
            n_missing,
            adata.n_obs,
            key,
            list(adata.obs_names[missing][:5]),
        )
    return values, n_missing


def _merge_equivalent(values: np.ndarray, found: list[str], parsed: dict, control: str) -> tuple[np.ndarray, list[str]]:
    """Labels that name the same perturbation (``"A"``, ``"A+ctrl"``; ``"A+B"``, ``"B+A"``) as one, so that a
    perturbation can never sit in training and test under two names: the canonical label where it is among
    them (:func:`~opencellplm.data.perturbations.perturbation_label`), else the first seen."""
    from ..data.perturbations import perturbation_label

    first: dict[tuple, str] = {}
    for label in found:
        canonical = perturbation_label(parsed[label], control=control)
        first.setdefault(parsed[label], canonical if parsed.get(canonical) == parsed[label] else label)
    rename = {label: first[parsed[label]] for label in found}
    merged = {label: to for label, to in rename.items() if label != to}
    if not merged:
        return values, found
    logger.info("labels naming the same perturbation merged: %s", dict(list(merged.items())[:5]))
    values = np.asarray([rename.get(v, v) for v in values], dtype=object)  # "" (no label) stays ""
    return values, list(dict.fromkeys(rename[label] for label in found))


def _measure(function) -> _Measured:
    """Run ``function``: its value, wall time, the rise of resident memory (sampled, see
    :class:`~opencellplm._memory.PeakMemory`), and the peak GPU memory."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakMemory("cpu") as peak:
        tic = time.perf_counter()
        value = function()
        seconds = time.perf_counter() - tic
    gpu = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return _Measured(value, round(seconds, 3), peak.mb, gpu)


def _reset_gpu_peak() -> bool:
    """Start a new GPU peak (True), or False without a GPU."""
    if not torch.cuda.is_available():
        return False
    torch.cuda.reset_peak_memory_stats()
    return True


def _gpu_peak(started: bool) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if started else None


def _max_or_none(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


__all__ = [
    "MethodRun",
    "PerturbationFitSummary",
    "PerturbationModule",
    "PerturbationObjective",
    "PerturbationPredictor",
    "PerturbationRecipe",
    "PerturbationResult",
    "predict_profiles",
]
