"""Spatial transcriptomic imputation: predict the genes a spatial panel did not measure from an scRNA-seq reference.

Design (TASKS.md §5). The model is fine-tuned on the spatial data and the reference together. Each cell set
comes from one of the two data sets and holds only the genes that data set measured, so each set's loss covers
only its own genes (the NB imputation loss: the decoder's mean over the input genes, scaled per cell to the
observed total, plus the GMVAE terms), under the official corruption (95% of cells with 25% of their genes
masked). The decoder predicts every vocabulary gene for every cell, so after fine-tuning a spatial cell's NB
mean over the reference genes is its imputed profile: ``mean[gene] * s`` with the cell's size factor
``s = sum(observed counts) / sum(mean)`` over the panel genes, the same rule as the baselines of
:mod:`opencellplm.baselines.imputation`.

Where this differs from the official release, on purpose: the official spatial figures were made with the
positional encoding switched off (``pe = 0.``) and with cells cut into arbitrary consecutive chunks. Here the
coordinates are encoded (:class:`~opencellplm.nn.positional.SinusoidalPositionalEncoding`, 2-D or 3-D) and a
large sample is cut into spatial tiles, so neighbours attend to each other. ``ImputationRecipe(positional=False,
partition="consecutive")`` gives the official setting back, and :meth:`SpatialImputer.score` can run both on the
same split (``variants``).

Validation (the best state is kept): a seeded share of each data set's cell sets (whole tiles of the spatial
data, random groups of reference cells) is held out; the monitored loss is the mean NB loss per measured entry
of those sets under a fixed, seeded corruption, averaged over the two data sets. Held-out genes of a score are
never read by any method.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from torch import nn

from .._memory import PeakMemory
from .._threads import thread_settings
from ..config import MaskingConfig, ModelConfig
from ..data.genes import normalise_gene_ids
from ..data.reader import counts_matrix, read_rows
from ..data.sets import CellSets, InputSpec
from ..data.validate import require_anndata, validate
from ..model import CellPLM
from ..module import CellPLMModule
from ..module.imputation import imputation_loss
from ..module.losses import LossOutput
from ..train import Distributed, Objective
from ..train.plan import shuffled_batch
from ..train.schedule import set_seed
from ..train.trainer import EVALUATION_STEP, Autocast
from ._saved import setting, settings_dataclass
from .base import FineTunedTask, FineTuneRecipe, Precision
from .result import MethodScore, TaskResult, plain

logger = logging.getLogger(__name__)

FORMAT = "opencellplm-imputer"
SETTINGS_FILE = "imputer.json"
#: ``var`` column of the working copies: the ids the model reads (normalised by the checkpoint's rule).
GENE_COLUMN = "cellplm_gene_id"
Role = Literal["spatial", "reference"]
#: CellPLM rows :meth:`SpatialImputer.score` can run, and the recipe changes each makes.
VARIANTS: dict[str, dict[str, Any]] = {
    "fine_tuned": {},
    "no_positional": {"positional": False},
    "chunks": {"positional": False, "partition": "consecutive"},
    "from_scratch": {},
    "panel_training": {"panel_rate": 0.5},
}
DEFAULT_VARIANTS = ("fine_tuned", "no_positional", "chunks", "from_scratch")


@dataclass(frozen=True)
class ImputationRecipe(FineTuneRecipe):
    """Fine-tuning settings (defaults: the official imputation settings of TASKS.md §5, in steps; the shared
    settings are :class:`~opencellplm.tasks.base.FineTuneRecipe`'s).

    Attributes
    ----------
    steps, patience, eval_every
        Optimizer steps at most; stop after ``patience`` evaluations without a lower validation loss.
    lr, warmup_steps, weight_decay, grad_clip
        AdamW (official: lr 5e-4, weight decay 1e-6, clipping 2.0), linear warm-up then cosine decay.
    sets_per_step
        Cell sets per optimizer step (drawn from both data sets, in proportion to their sets).
    max_cells
        Largest cell set (tiles of a spatial sample; random groups of reference cells).
    partition
        How the spatial data are cut: ``"tiles"`` (neighbours together; needs coordinates), ``"consecutive"``
        (arbitrary chunks in file order, as the official pipeline) or ``"random"``; ``"auto"``: tiles when
        there are coordinates. The reference is always cut at random.
    positional
        Encode the spatial coordinates (False: the official ``pe = 0``).
    mask_cell_rate, mask_gene_rate, drop_cell_rate
        Training corruption (official: 95% of cells, 25% of their genes). The official pipeline also keeps its
        checkpoint's cell dropping, 30% of a set's cells left out of each step with the released 85M model (its
        ``drop_node_rate``); ours drops none unless ``drop_cell_rate`` is set.
    validation_fraction
        Share of each data set's cell sets held out to pick the best state (at least one when it has two).
    panel_rate
        Share of the reference's training sets whose input is cut to the spatial panel's genes (the loss still
        covers every reference gene), so that the model practises the task itself: the whole profile from the
        panel. 0 is the official recipe.
    latent_weight
        Weight of the GMVAE terms in the fine-tuning loss (1: the official loss; 0 fits the NB term alone).
    max_reference_genes
        Keep at most this many reference genes: the panel's, the genes to impute named at :meth:`SpatialImputer.fit`,
        then the most variable others (scanpy's ``"seurat"`` flavour on log-normalised counts). None (the official
        setting) keeps all; a cap makes each step cheaper (the NB loss covers every input gene of a set), and only
        the kept genes can be imputed afterwards.
    dropout
        None keeps the checkpoint's.
    precision, seed
        ``"auto"`` (bf16 where the hardware has it), ``"bf16"`` or ``"fp32"``; the seed of the weights of a model
        from scratch, the partition, the validation sets, the masks and the set order.
    """

    steps: int = 300
    patience: int = 5
    eval_every: int = 20
    lr: float = 5e-4
    warmup_steps: int = 20
    weight_decay: float = 1e-6
    grad_clip: float = 2.0
    sets_per_step: int = 1
    max_cells: int = 1000
    partition: Literal["auto", "tiles", "consecutive", "random"] = "auto"
    positional: bool = True
    mask_cell_rate: float = 0.95
    mask_gene_rate: float = 0.25
    drop_cell_rate: float = 0.0
    validation_fraction: float = 0.1
    panel_rate: float = 0.0
    latent_weight: float = 1.0
    max_reference_genes: int | None = None
    dropout: float | None = None
    precision: Precision = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must lie in (0, 1), got {self.validation_fraction!r}")
        if not 0.0 <= self.panel_rate <= 1.0:
            raise ValueError(f"panel_rate must lie in [0, 1], got {self.panel_rate!r}")
        if not (isinstance(self.max_cells, int) and self.max_cells >= 1):
            raise ValueError(f"max_cells must be a positive integer, got {self.max_cells!r}")

    def masking(self) -> MaskingConfig:
        return MaskingConfig(
            cell_rate=self.mask_cell_rate, gene_rate=self.mask_gene_rate, drop_cell_rate=self.drop_cell_rate
        )

    def model_config(self, backbone: ModelConfig) -> ModelConfig:
        return backbone.replace(dropout=backbone.dropout if self.dropout is None else self.dropout)


@dataclass
class ImputationFitSummary:
    """What :meth:`SpatialImputer.fit` did."""

    pretrained: bool
    n_spatial_cells: int
    n_reference_cells: int
    n_panel_genes: int
    n_reference_genes: int
    n_genes_added_to_vocabulary: int
    positional: bool
    spatial_sets: int
    reference_sets: int
    steps: int
    best_val_loss: float | None
    seconds: float
    stopped_by: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class ImputationObjective(Objective):
    """NB imputation loss of each set on its own genes, both data sets; held-out sets pick the best state."""

    monitor = "val_loss"
    objective_name = "nb_loss"

    def __init__(
        self,
        sets: dict[Role, CellSets],
        train: list[tuple[Role, int]],
        validation: list[tuple[Role, int]],
        *,
        masking: MaskingConfig,
        sets_per_step: int,
        seed: int,
        panel_rate: float = 0.0,
        off_panel: torch.Tensor | None = None,
        latent_weight: float = 1.0,
    ):
        self.sets, self.train, self.validation = sets, train, validation
        self.panel_rate, self.off_panel = panel_rate, off_panel  # off_panel: reference columns outside the panel
        self.latent_weight = latent_weight
        self.masking, self.sets_per_step, self.seed = masking, sets_per_step, seed
        self.eval_masking = replace(masking, drop_cell_rate=0.0)

    def global_batch(self, step: int) -> list[tuple[Role, int]]:
        return shuffled_batch(self.train, step, self.sets_per_step, self.seed, stream=7)

    def loss(
        self, model: nn.Module, item: tuple[Role, int], device: torch.device, autocast: Autocast
    ) -> tuple[LossOutput, int]:
        role, index = item
        cell_set = self.sets[role].read(index, device)
        hide = None
        if role == "reference" and self.panel_rate > 0 and float(torch.rand(())) < self.panel_rate:
            hide = self.off_panel  # the input cut to the panel, the loss on every reference gene
        with autocast():  # the loss reads the set's own genes only: decode those alone
            out = model(cell_set.batch, corrupt=self.masking, hide=hide, decode_genes=cell_set.batch.gene_index)
        loss = imputation_loss(out)
        if self.latent_weight != 1.0:
            loss = replace(loss, total=loss.objective + self.latent_weight * loss.latent)
        return loss, len(out.kept_cells)

    def evaluate(self, module: nn.Module, world: Distributed, autocast: Autocast) -> dict[str, float]:
        """Mean NB loss per measured entry of the held-out sets, per data set, under a seeded corruption."""
        totals = {"spatial": [0.0, 0.0], "reference": [0.0, 0.0]}
        for position in range(world.rank, len(self.validation), world.world_size):
            role, index = self.validation[position]
            cell_set = self.sets[role].read(index, world.device)
            torch.manual_seed(set_seed(self.seed, EVALUATION_STEP, position))
            with autocast():
                out = module(cell_set.batch, corrupt=self.eval_masking, decode_genes=cell_set.batch.gene_index)
            loss = imputation_loss(out)
            n_cells, n_genes = cell_set.batch.counts.shape
            totals[role][0] += float(loss.objective) * n_cells
            totals[role][1] += n_cells * n_genes
        flat = world.sum([*totals["spatial"], *totals["reference"]])
        metrics = {}
        per_entry = []
        for role, (loss_sum, entries) in zip(("spatial", "reference"), (flat[:2], flat[2:]), strict=True):
            if entries:
                metrics[f"val_{role}_nll"] = loss_sum / entries
                per_entry.append(loss_sum / entries)
        metrics["val_loss"] = float(np.mean(per_entry)) if per_entry else math.nan
        return metrics


class SpatialImputer(FineTunedTask):
    """Impute the genes a spatial panel did not measure with a CellPLM fine-tuned on it and an scRNA-seq reference.

    Examples
    --------
    >>> imputer = SpatialImputer.from_pretrained("cellplm-small")                          # doctest: +SKIP
    >>> imputer.fit(spatial, reference)                                                     # doctest: +SKIP
    >>> result = imputer.predict(spatial)        # a new AnnData: panel + imputed genes     # doctest: +SKIP
    >>> result.layers["cellplm_imputed"], result.uns["cellplm"]["cellplm_imputed"]["genes"] # doctest: +SKIP
    >>> SpatialImputer.from_pretrained("cellplm-small").score(spatial, reference).to_frame()  # doctest: +SKIP
    """

    recipe_type = ImputationRecipe
    noun = "imputer"
    settings_file, format = SETTINGS_FILE, FORMAT
    zero_shot = True
    needs_decoder = "impute genes"
    recipe: ImputationRecipe
    summary: ImputationFitSummary | None

    def __init__(self, base: CellPLM, *, pretrained: bool, recipe: ImputationRecipe | None = None):
        super().__init__(base, pretrained=pretrained, recipe=recipe)
        self.reference_genes: list[str] = []  # model ids of the reference's genes (fit)
        self.panel_genes: list[str] = []  # model ids of the spatial panel's genes (fit)
        self.spatial_spec = InputSpec()
        self.spatial_input: dict[str, str | None] = {"layer": None, "gene_key": None, "sample_key": None}
        #: Model id -> the reference's var_name, for the reference genes named otherwise (a ``reference_gene_key``).
        self.reference_names: dict[str, str] = {}
        self._loaded_weights = False  # set by load(): the base holds fitted weights to continue from
        self._inputs_checked = False  # set by score(), which checks its inputs once for all its fits

    # ------------------------------------------------------------------------------------ fit
    def fit(
        self,
        spatial: AnnData,
        reference: AnnData,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        sample_key: str | None = None,
        spatial_key: str = "spatial",
        reference_layer: str | None = None,
        reference_gene_key: str | None = None,
        reference_sample_key: str | None = None,
        genes: Sequence[str] | None = None,
        extend_vocabulary: bool = False,
        device: str | None = None,
        names: tuple[str, str] = ("the spatial data", "the reference"),
    ) -> SpatialImputer:
        """Fine-tune on the spatial data and the reference together (see the module docstring).

        Both inputs are checked before any work (counts, layers, gene and sample columns, coordinates; every
        error names the input and its layer); the reference must be another AnnData than the spatial data and
        measure genes beyond the panel, and the ``genes`` to impute must be among its genes.

        Parameters
        ----------
        spatial
            Counts of the spatial panel (cells x panel genes), coordinates in ``obsm[spatial_key]``. Without
            coordinates the model runs without the positional encoding, and says so.
        reference
            scRNA-seq counts (cells x genes) measuring the genes to impute.
        layer, gene_key, sample_key
            Where the spatial counts and gene ids are, and the ``obs`` column of its samples (fields of view).
        reference_layer, reference_gene_key, reference_sample_key
            The same for the reference.
        genes
            Genes to impute later, kept in the reference input whatever ``recipe.max_reference_genes`` (they must be
            in the reference: model ids, or the reference's ``var_names`` when ``reference_gene_key`` is given);
            default: none in particular.
        extend_vocabulary
            Add the genes of either data set that are not in the model's vocabulary, with fresh embedding and
            decoder rows (needed for another species, e.g. Drosophila with a human model). Otherwise those
            genes are ignored.
        device
            Torch device (default: the model's).
        names
            How error messages name the two inputs (the command line passes their file names).
        """
        require_anndata(spatial)
        require_anndata(reference)
        started = time.perf_counter()
        if not self._inputs_checked:
            check_inputs(
                spatial,
                reference,
                layer=layer,
                gene_key=gene_key,
                sample_key=sample_key,
                spatial_key=spatial_key,
                reference_layer=reference_layer,
                reference_gene_key=reference_gene_key,
                reference_sample_key=reference_sample_key,
                names=names,
            )
        recipe = self.recipe
        base = self._fresh_base()
        spatial_ids = _gene_ids(spatial, gene_key, _id_rule(base))
        reference_ids = _gene_ids(reference, reference_gene_key, _id_rule(base))
        shared = sorted(set(spatial_ids) & set(reference_ids))
        if not shared:
            raise ValueError(
                f"{names[0]} ({len(spatial_ids)} genes, e.g. {spatial_ids[:3]}) and {names[1]} "
                f"({len(reference_ids)} genes, e.g. {reference_ids[:3]}) share no gene (ids compared after the "
                f"checkpoint's rule {base.gene_id_rule!r}); imputation links the two through shared genes: check "
                "gene_key / reference_gene_key (--gene-key / --reference-gene-key)"
            )
        added: list[str] = []
        if extend_vocabulary:
            added = base.extend_vocabulary(list(dict.fromkeys(spatial_ids + reference_ids)))
        vocabulary = set(base.genes)
        panel = [g for g in dict.fromkeys(spatial_ids) if g in vocabulary]
        ref_genes = [g for g in dict.fromkeys(reference_ids) if g in vocabulary]
        reference_names = {} if reference_gene_key is None else _names_of_ids(reference, reference_ids, ref_genes)
        targets = _target_ids(genes or (), _id_rule(base), ref_genes, reference_names)
        measured = set(ref_genes)
        missing = [g for g in dict.fromkeys(targets) if g not in measured]
        if missing:
            raise ValueError(
                f"{len(missing)} of the {len(set(targets))} genes to impute are not in {names[1]} (or not in the "
                f"model's vocabulary): {missing[:10]}{' ...' if len(missing) > 10 else ''}; only genes the reference "
                "measured can be imputed"
            )
        if recipe.max_reference_genes is not None and len(ref_genes) > recipe.max_reference_genes:
            ref_genes = _cap_reference_genes(
                reference,
                reference_layer,
                reference_gene_key,
                _id_rule(base),
                ref_genes,
                [*panel, *targets],
                recipe.max_reference_genes,
            )
        if not set(panel) & set(ref_genes):
            raise ValueError(
                f"none of the {len(shared)} genes shared by {names[0]} and {names[1]} (e.g. {shared[:3]}) is in the "
                f"model's vocabulary ({len(base.genes)} genes, e.g. {base.genes[:3]}); name a var column holding the "
                "vocabulary's ids with gene_key / reference_gene_key (--gene-key / --reference-gene-key), or pass "
                "extend_vocabulary=True (--extend-vocabulary) to add the genes with fresh, untrained rows"
            )
        if not set(ref_genes) - set(panel):
            raise ValueError(
                f"{names[1]} measures no gene beyond the panel of {names[0]} (in the model's vocabulary): there is "
                "nothing to impute; give a reference that measures the genes to impute"
            )
        spatial_work = _working_copy(spatial, layer, gene_key, _id_rule(base), panel, sample_key, spatial_key)
        reference_work = _working_copy(
            reference, reference_layer, reference_gene_key, _id_rule(base), ref_genes, reference_sample_key, None
        )
        spatial_spec = self._spatial_spec(spatial_work, sample_key, spatial_key)
        reference_spec = InputSpec(
            gene_key=GENE_COLUMN,
            sample_key=reference_sample_key,
            spatial_key=None,
            max_cells=recipe.max_cells,
            partition="random",
            seed=recipe.seed,
        )
        sets = {}
        for role, name, work, spec in (
            ("spatial", names[0], spatial_work, spatial_spec),
            ("reference", names[1], reference_work, reference_spec),
        ):
            try:
                sets[role] = self._cell_sets(base, work, spec, warn_stacklevel=4)
            except ValueError as err:  # the working copy's counts are "X" whatever layer they came from
                raise ValueError(f"{name}: {err}") from None
        train, validation = _split_sets(sets, recipe.validation_fraction, recipe.seed)
        torch.manual_seed(recipe.seed)
        module = CellPLMModule(recipe.model_config(base.config))
        if self.pretrained or self._loaded_weights:
            module.load_state_dict(base.module.state_dict())
        if added and module.decoder is not None:
            _start_added_genes_at_data_profile(module, base.genes, added, (reference_work, spatial_work))
        objective = ImputationObjective(
            sets,
            train,
            validation,
            masking=recipe.masking(),
            sets_per_step=recipe.sets_per_step,
            seed=recipe.seed,
            panel_rate=recipe.panel_rate,
            off_panel=torch.as_tensor(~np.isin(ref_genes, panel)),
            latent_weight=recipe.latent_weight,
        )
        summary = self._fine_tune(module, objective, device=device or base.device)
        self.base, self.module = base, module.eval()
        self.panel_genes, self.reference_genes = panel, ref_genes
        self.reference_names = reference_names
        self.spatial_spec = spatial_spec
        self.spatial_input = {"layer": layer, "gene_key": gene_key, "sample_key": sample_key}
        self.summary = ImputationFitSummary(
            pretrained=self.pretrained,
            n_spatial_cells=sets["spatial"].n_cells,
            n_reference_cells=sets["reference"].n_cells,
            n_panel_genes=len(panel),
            n_reference_genes=len(ref_genes),
            n_genes_added_to_vocabulary=len(added),
            positional=sets["spatial"]._use_coords,
            spatial_sets=len(sets["spatial"]),
            reference_sets=len(sets["reference"]),
            steps=summary.steps,
            best_val_loss=summary.best,
            seconds=round(time.perf_counter() - started, 2),
            stopped_by=summary.stopped_by,
            history=summary.history,
        )
        logger.info(
            "imputer fitted (%s, positional encoding %s): best validation loss %s after %d steps",
            "pretrained" if self.pretrained else "from scratch",
            "on" if self.summary.positional else "off",
            self.summary.best_val_loss,
            summary.steps,
        )
        return self

    def _fresh_base(self) -> CellPLM:
        """A copy of the base model to fit (extending the vocabulary must not change ``self.base``)."""
        base = self.base
        module = CellPLMModule(base.module.config)
        module.load_state_dict(base.module.state_dict())
        return CellPLM(module, list(base.genes), meta=dict(base.meta), source=dict(base.source), device=base.device)

    def _spatial_spec(self, work: AnnData, sample_key: str | None, spatial_key: str) -> InputSpec:
        recipe = self.recipe
        has_coords = spatial_key in work.obsm
        partition = recipe.partition
        if not has_coords:
            if recipe.positional or partition == "tiles":
                warnings.warn(
                    f"the spatial data have no coordinates in obsm[{spatial_key!r}]: imputing without the positional "
                    "encoding, with cells grouped at random instead of in spatial tiles",
                    UserWarning,
                    stacklevel=4,
                )
            partition = "random"
        return InputSpec(
            gene_key=GENE_COLUMN,
            sample_key=sample_key,
            spatial_key=spatial_key if has_coords else None,
            max_cells=recipe.max_cells,
            partition=partition,
            seed=recipe.seed,
        )

    def _cell_sets(
        self,
        base: CellPLM,
        work: AnnData,
        spec: InputSpec,
        *,
        warn_stacklevel: int,
        left_out: str = "they are left out",
    ) -> CellSets:
        return CellSets(
            work,
            spec,
            vocabulary=base.genes,
            gene_id_rule="exact",  # the working copies carry ids already normalised by the checkpoint's rule
            positional=self.recipe.positional and base.config.positional_encoding != "none",
            require_counts=True,
            left_out=left_out,
            warn_stacklevel=warn_stacklevel + 1,
        )

    # -------------------------------------------------------------------------------- predict
    def _targets(self, genes: Sequence[str] | None, panel: Sequence[str]) -> list[str]:
        rule = _id_rule(self.base)
        if genes is None:
            if not self.fitted:
                raise ValueError(
                    "name the genes to impute (genes=...): an imputer that was not fitted has no reference"
                )
            in_panel = set(panel)
            targets = [g for g in self.reference_genes if g not in in_panel]
            if not targets:
                raise ValueError("the reference measures no gene beyond the spatial panel: nothing to impute")
            return targets
        known_ids = self.reference_genes if self.fitted else self.base.genes
        targets = list(dict.fromkeys(_target_ids(genes, rule, known_ids, self.reference_names)))
        known = set(known_ids)
        missing = [g for g in targets if g not in known]
        if missing:
            where = "the reference the imputer was fitted on" if self.fitted else "the model's vocabulary"
            hint = "only genes the reference measured can be imputed"
            if self.fitted and self.recipe.max_reference_genes is not None:
                hint += (
                    f"; the fit kept {len(self.reference_genes)} reference genes (recipe.max_reference_genes): name "
                    "the genes to impute in fit(genes=...) to keep them"
                )
            raise ValueError(
                f"{len(missing)} of the {len(targets)} genes to impute are not in {where}: {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}; {hint}"
            )
        return targets

    @torch.inference_mode()
    def impute(
        self, spatial: AnnData, genes: Sequence[str] | None = None, *, exclude: Sequence[str] = ()
    ) -> pd.DataFrame:
        """The imputed expression of ``genes`` (default: every reference gene outside the panel) for each spatial
        cell, on the spatial count scale: a DataFrame (cells x genes, float32) indexed like ``spatial``.

        The spatial genes in ``exclude`` and the target genes themselves are never read from ``spatial``
        (held-out genes cannot leak into their own prediction). Cells without counts in the panel get 0 (their size
        factor is 0), as in the baselines.
        """
        require_anndata(spatial)
        module = self._require_module()
        spec_fields = self.spatial_input
        base = self.base
        spatial_ids = _gene_ids(spatial, spec_fields["gene_key"], _id_rule(base))
        vocabulary = set(base.genes)
        targets = self._targets(genes, [g for g in spatial_ids if g in vocabulary])
        skip = set(targets) | set(normalise_gene_ids([str(g) for g in exclude], *_id_rule(base)))
        panel = [g for g in dict.fromkeys(spatial_ids) if g in vocabulary and g not in skip]
        if not panel:
            raise ValueError("no gene of the spatial data is in the model's vocabulary (targets and exclude left out)")
        spatial_key = self.spatial_spec.spatial_key or "spatial"
        work = _working_copy(
            spatial,
            spec_fields["layer"],
            spec_fields["gene_key"],
            _id_rule(base),
            panel,
            spec_fields["sample_key"],
            spatial_key,
        )
        spec = self._spatial_spec(work, spec_fields["sample_key"], spatial_key)
        sets = self._cell_sets(base, work, spec, warn_stacklevel=3, left_out="their imputed values are 0")
        rows_of = {g: i for i, g in enumerate(base.genes)}
        target_rows = torch.as_tensor([rows_of[g] for g in targets])
        out = np.zeros((spatial.n_obs, len(targets)), dtype=np.float32)
        device = next(module.parameters()).device  # fit(device=...) may have moved the weights
        was_training = module.training
        module.eval()
        try:
            for cell_set in sets.iterate(device):
                panel_rows = cell_set.batch.gene_index
                decode = torch.cat([panel_rows, target_rows.to(panel_rows.device)])
                mean = module(cell_set.batch, decode_genes=decode).nb.mean.double()  # panel genes, then targets
                observed = cell_set.batch.counts.to_dense().double().sum(1)
                size_factor = observed / mean[:, : len(panel_rows)].sum(1)
                imputed = (mean[:, len(panel_rows) :] * size_factor[:, None]).cpu().numpy()
                if not np.isfinite(imputed).all():
                    raise FloatingPointError(
                        "the model gave non-finite NB means; its weights or the input values are broken"
                    )
                out[cell_set.rows] = imputed
        finally:
            module.train(was_training)
        return pd.DataFrame(out, index=spatial.obs_names.copy(), columns=pd.Index(targets, dtype=str))

    def predict(
        self, spatial: AnnData, genes: Sequence[str] | None = None, *, layer_added: str = "cellplm_imputed"
    ) -> AnnData:
        """A new AnnData: the spatial cells (``obs``, ``obsm``, ``uns`` copied) over the panel genes followed by
        the imputed genes. ``X`` holds what was measured (the panel's counts; the imputed genes' columns are
        empty, they were not measured); ``layers[layer_added]`` holds the measured counts of the panel and the
        imputed values (count scale) of the other genes; ``var[layer_added]`` flags the imputed columns; and
        ``uns['cellplm'][layer_added]`` lists the imputed genes with the settings. ``spatial`` is not changed.
        Imputed genes are named as the reference's ``var_names`` name them (the model's ids, after the checkpoint's
        gene id rule, when no ``reference_gene_key`` was given); with a gene key, ``var[GENE_COLUMN]`` holds every
        column's model id. ``genes`` may name model ids or the reference's ``var_names``. The result is dense in
        the imputed genes (``4 * n_obs * n_genes`` bytes): impute large data in slices of cells.
        """
        imputed = self.impute(spatial, genes)
        gene_key = self.spatial_input["gene_key"]
        spatial_ids = _gene_ids(spatial, gene_key, _id_rule(self.base))
        panel_ids = set(spatial_ids)
        kept = [g for g in imputed.columns if g in panel_ids]
        if kept:
            warnings.warn(
                f"{len(kept)} requested gene(s) were measured by the panel, e.g. {kept[:3]}: the result keeps their "
                "measured counts (use impute() to see the model's prediction of them)",
                UserWarning,
                stacklevel=2,
            )
        measured = sp.csr_matrix(counts_matrix(spatial, self.spatial_input["layer"])[:, :], dtype=np.float32)
        new = [g for g in imputed.columns if g not in panel_ids]
        values = imputed[new].to_numpy()
        # imputed genes are named as the reference names them (its var_names), unless that name is taken
        taken = set(map(str, spatial.var_names))
        new_names = [self.reference_names.get(g, g) for g in new]
        repeats = Counter(new_names)
        new_names = [n if n not in taken and repeats[n] == 1 else g for n, g in zip(new_names, new)]
        x = sp.hstack([measured, sp.csr_matrix((spatial.n_obs, len(new)), dtype=np.float32)], format="csr")
        var = pd.DataFrame(index=pd.Index(list(map(str, spatial.var_names)) + new_names, dtype=str))
        var[layer_added] = np.r_[np.zeros(spatial.n_vars, bool), np.ones(len(new), bool)]
        if gene_key is not None or self.reference_names:
            var[GENE_COLUMN] = np.asarray(spatial_ids + new, dtype=str)  # the model's id of every column
        result = AnnData(x, obs=spatial.obs.copy(), var=var, obsm=dict(spatial.obsm), uns=dict(spatial.uns))
        result.layers[layer_added] = np.hstack([measured.toarray(), values]).astype(np.float32)
        source = {k: v for k, v in self.base.source.items() if v is not None}
        result.uns.setdefault("cellplm", {})
        result.uns["cellplm"] = dict(result.uns["cellplm"]) | {
            layer_added: {
                "genes": np.asarray(new_names, dtype=str),
                "gene_ids": np.asarray(new, dtype=str),
                "params": {
                    "pretrained": self.pretrained,
                    "fine_tuned": self.fitted,
                    "positional": bool(self.summary.positional) if self.summary else False,
                    "checkpoint_name": str(source.get("name", "")),
                    "checkpoint_sha256": str(source.get("sha256", "")),
                    "recipe": {k: v for k, v in asdict(self.recipe).items() if v is not None},
                },
                "threads": thread_settings(),
                "note": "imputed genes are on the count scale of the spatial data (NB mean times each cell's size "
                "factor over the panel); X holds only measured values",
            }
        }
        return result

    # ------------------------------------------------------------------------------------ score
    def score(
        self,
        spatial: AnnData,
        reference: AnnData,
        *,
        n_folds: int = 5,
        max_per_bin: int | None = 25,
        folds: Sequence[int] | None = None,
        seed: int = 0,
        variants: Sequence[str] = DEFAULT_VARIANTS,
        baselines: Sequence[str] = ("reference_mean", "spage_style", "tangram", "gimvi"),
        values: str = "counts",
        device: str | None = None,
        keep_example: bool = False,
        **fit_kwargs: Any,
    ) -> ImputationResult:
        """Hold out spatial genes, impute them with CellPLM and the baselines on the same split, and score them.

        The genes shared by the spatial data and the reference are dealt into ``n_folds`` folds stratified by their
        zero rate in the spatial data (:func:`~opencellplm.metrics.imputation.held_out_gene_folds`, at most
        ``max_per_bin`` genes of each zero-rate bin per fold; None: every shared gene is held out once). In each
        fold every method sees the spatial data without the held-out genes, and the reference; CellPLM rows
        start from this imputer's base weights each time (``variants``: ``fine_tuned`` with this recipe,
        ``no_positional`` without the encoding (still tiles), ``chunks`` as the official pipeline (no encoding,
        consecutive chunks), ``from_scratch`` fresh weights, ``panel_training`` half the reference sets cut to the
        panel, see :class:`ImputationRecipe`). Pearson r, cosine similarity and RMSE per held-out gene on
        log1p values (:func:`~opencellplm.metrics.imputation.imputation_scores`), averaged over genes (genes are
        matched by ``var_names``; the held-out genes are kept in the reference input of a capped fit); the result
        gives each fold and the mean and spread over folds. ``seed`` seeds the folds, every CellPLM fit (it replaces
        the recipe's seed) and the SpaGE-style baseline. ``values`` says what the spatial values are (e.g.
        ``"pseudo counts: rint(100 * intensity)"``) and is carried into the result; ``keep_example`` keeps, for the
        first held-out gene of the first scored fold, its measured values and every method's prediction
        (:attr:`ImputationResult.example`, for maps); ``fit_kwargs`` go to :meth:`fit`.
        """
        from .. import __version__
        from ..baselines.registry import baselines_for, run_baseline
        from ..metrics.imputation import held_out_gene_folds, imputation_scores, zero_rates

        require_anndata(spatial)
        require_anndata(reference)
        if self._loaded_weights and self.fitted:
            raise ValueError(
                "this imputer was loaded with fine-tuned weights, which may have seen the genes score holds out; "
                "score an imputer made by SpatialImputer.from_pretrained (or from_scratch)"
            )
        if fit_kwargs.get("gene_key") or fit_kwargs.get("reference_gene_key"):
            raise ValueError("score matches the genes of the two data sets by var_names; put the gene ids there")
        check_inputs(spatial, reference, **{k: v for k, v in fit_kwargs.items() if k in _INPUT_KEYS})
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; choose among {list(VARIANTS)}")
        chosen_baselines = baselines_for("imputation", baselines)
        layer = fit_kwargs.get("layer")
        reference_layer = fit_kwargs.get("reference_layer")
        in_reference = set(reference.var_names)
        shared = [g for g in spatial.var_names if g in in_reference]
        if len(shared) < 2:
            raise ValueError(
                f"scoring holds out genes measured by both data sets; they share {len(shared)} gene(s) by var_names"
            )
        shared_columns = spatial.var_names.get_indexer(shared)
        truth_all = sp.csr_matrix(counts_matrix(spatial, layer)[:, :], dtype=np.float32)[:, shared_columns]
        fold_genes = held_out_gene_folds(zero_rates(truth_all), n_folds=n_folds, max_per_bin=max_per_bin, seed=seed)
        chosen = range(len(fold_genes)) if folds is None else folds
        rows: list[dict[str, Any]] = []
        skipped: dict[str, str] = {}
        example: dict[str, Any] | None = None
        for fold in chosen:
            held = [shared[i] for i in fold_genes[fold]]
            truth = truth_all[:, fold_genes[fold]]
            keep = ~spatial.var_names.isin(held)
            spatial_in = spatial[:, keep].to_memory() if spatial.isbacked else spatial[:, keep].copy()
            logger.info("fold %d: %d held-out genes", fold, len(held))

            if keep_example and example is None:
                # the held-out gene measured in the most cells: a map with spread, not one of nearly all zeros
                column = int(np.argmax(truth.getnnz(axis=0)))
                example = {
                    "gene": held[column],
                    "column": column,
                    "fold": fold,
                    "truth": truth[:, column].toarray().ravel(),
                    "predictions": {},
                }
            shown = example if example is not None and example["fold"] == fold else None

            def record(
                method: str,
                prediction,
                fit_s,
                predict_s,
                peak_mb,
                params,
                fold=fold,
                held=held,
                truth=truth,
                shown=shown,
            ):
                prediction = np.asarray(prediction)
                if shown is not None:
                    shown["predictions"][method] = prediction[:, shown["column"]].astype(np.float32)
                scores = imputation_scores(truth, prediction, genes=held)
                rows.append(
                    {"fold": fold, "method": method}
                    | scores.to_dict()
                    | {"fit_seconds": fit_s, "predict_seconds": predict_s, "peak_memory_mb": peak_mb, "params": params}
                )
                logger.info("fold %d %s: pearson %.3f cosine %.3f", fold, method, scores.pearson, scores.cosine)

            for variant in variants:
                recipe = replace(self.recipe, seed=seed, **VARIANTS[variant])
                scratch = variant == "from_scratch" or not self.pretrained
                imputer = SpatialImputer(self.base, pretrained=not scratch, recipe=recipe)
                imputer._loaded_weights = self._loaded_weights and not scratch
                imputer._inputs_checked = True  # above, once
                with PeakMemory(device or self.base.device) as peak:
                    tic = time.perf_counter()
                    imputer.fit(spatial_in, reference, genes=held, device=device, **fit_kwargs)
                    fit_s = time.perf_counter() - tic
                    tic = time.perf_counter()
                    prediction = imputer.impute(spatial_in, held)
                    predict_s = time.perf_counter() - tic
                summary = {k: v for k, v in asdict(imputer.summary).items() if k != "history"}
                record(f"cellplm_{variant}", prediction.to_numpy(), fit_s, predict_s, peak.mb, summary)
            for name, baseline in chosen_baselines.items():
                result, why = run_baseline(
                    baseline,
                    spatial_in,
                    reference,
                    held,
                    spatial_layer=layer,
                    reference_layer=reference_layer,
                    seed=seed,
                )
                if why is not None:
                    skipped[name] = why
                    logger.warning("baseline %s skipped: %s", name, why)
                    continue
                record(name, result.prediction, *result.timing(), result.peak_mb, result.params)
        return ImputationResult(
            folds=[[shared[i] for i in genes] for genes in fold_genes],
            scored_folds=list(chosen),
            seed=seed,
            rows=rows,
            skipped=skipped,
            n_spatial_cells=spatial.n_obs,
            n_shared_genes=len(shared),
            checkpoint=dict(self.base.source),
            recipe=asdict(replace(self.recipe, seed=seed)),
            version=__version__,
            values=values,
            example=example,
        )

    # ----------------------------------------------------------------------------- save / load
    # save() writes the weights (our checkpoint format, in ``model/``; an extended vocabulary included) with the
    # recipe, the genes of the fit and the base checkpoint's identity (``imputer.json``).
    def _settings(self) -> dict[str, Any]:
        return {
            "fine_tuned": self.fitted,
            "panel_genes": self.panel_genes,
            "reference_genes": self.reference_genes,
            "reference_names": self.reference_names,
            "spatial_spec": self.spatial_spec.to_dict(),
            "spatial_input": self.spatial_input,
        }

    def _restore(self, directory: Path, settings: dict[str, Any]) -> None:
        path = directory / SETTINGS_FILE
        self.spatial_spec = settings_dataclass(path, settings, "spatial_spec", InputSpec)
        self._loaded_weights = True
        if setting(path, settings, "fine_tuned", bool):
            self.module = self.base.module.eval()
            self.summary = ImputationFitSummary(**settings["fit"]) if settings.get("fit") else None
        self.panel_genes = list(settings["panel_genes"])
        self.reference_genes = list(settings["reference_genes"])
        self.reference_names = dict(settings.get("reference_names") or {})
        self.spatial_input = dict(settings["spatial_input"])


@dataclass(frozen=True)
class ImputationResult(TaskResult):
    """Scores of CellPLM and the baselines on held-out spatial genes (see :meth:`SpatialImputer.score`): a
    :class:`~opencellplm.tasks.result.TaskResult` whose :attr:`methods` average the folds.

    ``rows`` has one entry per fold and method: ``pearson``, ``cosine``, ``rmse`` (means over the fold's genes),
    ``n_genes``, ``n_undefined_pearson``, ``fit_seconds`` (None for baselines, timed as one call),
    ``predict_seconds``, ``peak_memory_mb`` (rise of resident memory, or CUDA peak), ``params``. ``values`` says
    what the spatial values are (e.g. pseudo counts), as every figure from them must. ``example`` (with
    ``score(keep_example=True)``): the held-out gene of the first scored fold measured in the most cells: its
    ``gene`` name, measured ``truth`` (spatial cells) and ``predictions`` per method, on the count scale of the
    input; not part of :meth:`to_dict`.
    """

    folds: list[list[str]]
    scored_folds: list[int]
    seed: int
    rows: list[dict[str, Any]]
    skipped: dict[str, str]
    n_spatial_cells: int
    n_shared_genes: int
    checkpoint: dict[str, Any]
    recipe: dict[str, Any]
    version: str
    values: str = "counts"
    example: dict[str, Any] | None = field(default=None, repr=False)
    threads: dict[str, Any] = field(default_factory=thread_settings)  # the CPU threads in force when scored

    @property
    def methods(self) -> list[MethodScore]:
        """Per method, over the scored folds: the mean ``pearson``, ``cosine`` and ``rmse``, the summed seconds, the
        highest peak memory, and each fold's ``params`` (``folds``; with the fine-tuning ``steps`` of each)."""
        frame = self.per_fold().reset_index()
        out: list[MethodScore] = []
        for method, rows in frame.groupby("method", sort=False):
            params = [row["params"] for row in self.rows if row["method"] == method]
            steps = [int(p["steps"]) for p in params if p and "steps" in p]
            fit, predict = rows["fit_seconds"], rows["predict_seconds"]
            out.append(
                MethodScore(
                    str(method),
                    {metric: plain(rows[metric].mean()) for metric in ("pearson", "cosine", "rmse")},
                    seconds=plain((fit.fillna(0) + predict.fillna(0)).sum()),
                    fit_seconds=None if fit.isna().all() else plain(fit.sum()),
                    predict_seconds=None if predict.isna().all() else plain(predict.sum()),
                    params={"folds": params} | ({"steps": steps} if steps else {}),
                    peak_mb=plain(rows["peak_memory_mb"].max()),
                )
            )
        return out

    def per_fold(self) -> pd.DataFrame:
        """One row per fold and method (none when no method ran: every one was skipped)."""
        columns = ["method", "fold", "pearson", "cosine", "rmse", "fit_seconds", "predict_seconds", "peak_memory_mb"]
        rows = [{k: v for k, v in row.items() if k != "params"} for row in self.rows]
        frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
        return frame.set_index(["method", "fold"])

    def to_frame(self) -> pd.DataFrame:
        """Per method: the mean and standard deviation over folds of each score, and the mean times and memory."""
        frame = self.per_fold().reset_index()
        if frame.empty:  # every method was skipped
            return pd.DataFrame(index=pd.Index([], name="method"))
        grouped = frame.groupby("method", sort=False)
        out = pd.DataFrame(index=pd.Index(frame["method"].unique(), name="method"))
        for metric in ("pearson", "cosine", "rmse"):
            out[metric] = grouped[metric].mean()
            out[f"{metric}_std"] = grouped[metric].std(ddof=1) if grouped.size().min() > 1 else np.nan
        for column in ("fit_seconds", "predict_seconds", "peak_memory_mb"):
            out[column] = grouped[column].mean()
        out["folds"] = grouped.size()
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "example"}


_INPUT_KEYS = (
    "layer",
    "gene_key",
    "sample_key",
    "spatial_key",
    "reference_layer",
    "reference_gene_key",
    "reference_sample_key",
    "names",
)


def check_inputs(
    spatial: AnnData,
    reference: AnnData,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    sample_key: str | None = None,
    spatial_key: str = "spatial",
    reference_layer: str | None = None,
    reference_gene_key: str | None = None,
    reference_sample_key: str | None = None,
    names: tuple[str, str] = ("the spatial data", "the reference"),
) -> None:
    """Refuse unusable inputs of :meth:`SpatialImputer.fit` before any work: the same AnnData twice, and for each
    input the errors of :func:`~opencellplm.data.validate` (counts that are not raw counts or hold NaN, a missing
    layer, gene or sample column, bad coordinates), each message naming the input (``names``) and its layer."""
    require_anndata(spatial)
    require_anndata(reference)
    if spatial is reference:
        raise ValueError(
            f"{names[1]} is {names[0]} itself; imputation needs a separate scRNA-seq reference that measures the "
            "genes the spatial panel did not"
        )
    for adata, name, options in (
        (spatial, names[0], {"layer": layer, "gene_key": gene_key, "sample_key": sample_key}),
        (
            reference,
            names[1],
            {"layer": reference_layer, "gene_key": reference_gene_key, "sample_key": reference_sample_key},
        ),
    ):
        coords = spatial_key if adata is spatial and spatial_key in adata.obsm else None  # absent: no encoding
        report = validate(adata, spatial_key=coords, require_counts=True, **options)
        if report.errors:
            source = "X" if options["layer"] is None else f"layers[{options['layer']!r}]"
            raise ValueError(f"{name} cannot be used (counts in {source}):\n- " + "\n- ".join(report.errors))


def _names_of_ids(adata: AnnData, ids: Sequence[str], kept: Sequence[str]) -> dict[str, str]:
    """Model id -> var_name of the ``kept`` genes whose var_name differs from their id (first column of an id)."""
    wanted = set(kept)
    names: dict[str, str] = {}
    for gene_id, name in zip(ids, map(str, adata.var_names)):
        if gene_id in wanted and gene_id != name:
            names.setdefault(gene_id, name)
    return names


def _id_rule(model: CellPLM) -> tuple[str, dict[str, str]]:
    """How ``model`` reads input ids: its gene id rule, then its gene aliases (``normalise_gene_ids``'s arguments)."""
    return model.gene_id_rule, model.gene_aliases


def _target_ids(genes: Sequence[str], rule, known: Sequence[str], names: dict[str, str]) -> list[str]:
    """The model ids of the genes to impute, each given as a model id or as the reference's var_name."""
    ids_of_names = {}
    for gene_id, name in names.items():
        ids_of_names.setdefault(name, gene_id)
    known = set(known)
    given = [str(g) for g in genes]
    normalised = normalise_gene_ids(given, *rule)
    return [n if n in known or g not in ids_of_names else ids_of_names[g] for g, n in zip(given, normalised)]


def _gene_ids(adata: AnnData, gene_key: str | None, rule) -> list[str]:
    if gene_key is not None and gene_key not in adata.var:
        raise KeyError(f"gene_key {gene_key!r} is not a column of var (columns: {list(adata.var.columns)[:10]})")
    ids = adata.var_names if gene_key is None else adata.var[gene_key].astype(str)
    return normalise_gene_ids([str(g) for g in ids], *rule)


def _cap_reference_genes(
    reference: AnnData,
    layer: str | None,
    gene_key: str | None,
    rule,
    genes: list[str],
    keep: Sequence[str],
    cap: int,
) -> list[str]:
    """``genes`` (reference order) cut to ``cap``: those in ``keep`` first, then the most variable others."""
    import scanpy as sc

    kept = set(keep) & set(genes)
    others = [g for g in genes if g not in kept]
    n_more = max(0, cap - len(kept))
    if n_more and others:
        work = _working_copy(reference, layer, gene_key, rule, others, None, None)
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
        n_more = min(n_more, len(others))
        if n_more < len(others):
            sc.pp.highly_variable_genes(work, flavor="seurat", n_top_genes=n_more)
            kept |= set(work.var_names[work.var["highly_variable"].to_numpy()])
        else:
            kept |= set(others)
    logger.info("reference cut to %d of its %d genes (panel, targets, most variable)", len(kept), len(genes))
    return [g for g in genes if g in kept]


def _start_added_genes_at_data_profile(
    module: CellPLMModule, vocabulary: Sequence[str], added: Sequence[str], works: Sequence[AnnData]
) -> None:
    """Start the NB decoder rows of the genes added to the vocabulary at the data's mean profile: weights 0, bias the
    log of the gene's mean share of a cell's counts (from the first of ``works`` that measures it), shifted by the
    median gap between the pretrained bias and the log share of the genes the model already knew there.

    Why: fresh rows are random. A decoder whose hidden units vary between cells then adds noise to every added gene,
    different in each cell, which a short fine-tune does not undo (BDTNP, every gene added: held-out genes' Pearson
    r 0.047 against 0.210 for the reference mean profile). Started here, an added gene is predicted at its mean
    share of each cell's counts, the reference-mean baseline, and fine-tuning learns from there.
    """
    row = {g: i for i, g in enumerate(vocabulary)}
    new, bias = set(added), module.decoder.mean.bias.detach()
    known_bias = bias.float().cpu().numpy()  # read once (one device sync, not one per gene)
    start: dict[str, float] = {}
    for work in works:
        counts = sp.csr_matrix(work.X)
        totals = np.asarray(counts.sum(axis=1)).ravel()
        counted = totals > 0
        if not counted.any():
            continue
        shares = np.asarray((sp.diags(1.0 / totals[counted]) @ counts[counted]).mean(axis=0)).ravel()
        genes = list(work.var_names)
        known = [j for j, g in enumerate(genes) if g not in new and shares[j] > 0]
        gap = float(np.median([known_bias[row[genes[j]]] - math.log(shares[j]) for j in known])) if known else 0.0
        floor = shares[shares > 0].min() if (shares > 0).any() else 1.0
        for j, gene in enumerate(genes):
            if gene in new:
                start.setdefault(gene, math.log(max(shares[j], floor)) + gap)
    if start:
        rows = torch.as_tensor([row[g] for g in start], device=bias.device)
        with torch.no_grad():
            module.decoder.mean.weight[rows] = 0.0
            module.decoder.mean.bias[rows] = torch.as_tensor(list(start.values()), dtype=bias.dtype, device=bias.device)


def _working_copy(
    adata: AnnData,
    layer: str | None,
    gene_key: str | None,
    rule,
    genes: Sequence[str],
    sample_key: str | None,
    spatial_key: str | None,
) -> AnnData:
    """The counts of ``genes`` (model ids) in that order, with the sample labels and coordinates the sets need.

    Input columns that reach one id through the checkpoint's gene aliases (mouse ``Ins1`` and ``Ins2`` -> ``INS``)
    are summed, as the corpus that trained it summed them; ids repeated by the rule alone keep their first column.
    """
    ids = _gene_ids(adata, gene_key, rule)
    sources: dict[str, list[int]] = {}
    for column, gene in enumerate(ids):
        sources.setdefault(gene, []).append(column)
    if not rule[1]:  # no aliases
        sources = {gene: columns[:1] for gene, columns in sources.items()}
    read = [column for g in genes for column in sources[g]]
    owner = [j for j, g in enumerate(genes) for _ in sources[g]]
    merge = sp.csr_matrix((np.ones(len(read)), (np.arange(len(read)), owner)), shape=(len(read), len(genes)))
    counts = sp.csr_matrix(read_rows(counts_matrix(adata, layer), np.arange(adata.n_obs), np.asarray(read))) @ merge
    obs = pd.DataFrame(index=adata.obs_names.copy())
    if sample_key is not None:
        if sample_key not in adata.obs:
            raise KeyError(f"sample_key {sample_key!r} is not a column of obs")
        obs[sample_key] = adata.obs[sample_key].to_numpy()
    obsm = {}
    if spatial_key is not None and spatial_key in adata.obsm:
        obsm[spatial_key] = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    var = pd.DataFrame({GENE_COLUMN: np.asarray(genes, dtype=str)}, index=pd.Index(list(genes), dtype=str))
    return AnnData(sp.csr_matrix(counts, dtype=np.float32), obs=obs, var=var, obsm=obsm)


def _split_sets(
    sets: dict[Role, CellSets], fraction: float, seed: int
) -> tuple[list[tuple[Role, int]], list[tuple[Role, int]]]:
    """Training and validation sets: a seeded share of each data set's sets (none of a data set with one set)."""
    train, validation = [], []
    for stream, role in enumerate(("spatial", "reference")):
        n = len(sets[role])
        n_val = 0 if n < 2 else max(1, round(fraction * n))
        held = set(np.random.default_rng([seed, 11, stream]).permutation(n)[:n_val].tolist())
        if n_val == 0:
            logger.warning("the %s data form one cell set only: none of it is held out for validation", role)
        train += [(role, i) for i in range(n) if i not in held]
        validation += [(role, i) for i in sorted(held)]
    if not validation:
        logger.warning("no cell set is held out: the validation loss is measured on training sets")
        validation = list(train)
    return train, validation


__all__ = [
    "DEFAULT_VARIANTS",
    "ImputationFitSummary",
    "ImputationObjective",
    "ImputationRecipe",
    "ImputationResult",
    "SpatialImputer",
    "check_inputs",
]
