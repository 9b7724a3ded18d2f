"""Batch-effect removal: embed cells of several batches so that cell types stay apart and batches mix.

CellPLM's decoder is batch-aware: it takes each cell's batch as a covariate, so that (the paper's claim) the
latent space need not encode the batch. Two CellPLM rows test this: the pretrained model zero-shot, and a
:class:`BatchIntegrator`, the model fine-tuned on the user's cells with the pretraining objective while its
decoder is given their batch (a new row of the decoder's batch table per batch). :func:`score_integration`
scores any embeddings with the scib metrics (:mod:`opencellplm.metrics.integration`) beside the baselines of
the ``integration`` registry (PCA, scVI, Harmony, Scanorama), on the same cells.

Examples
--------
>>> integrator = BatchIntegrator.from_pretrained("cellplm-small").fit(adata, "donor")     # doctest: +SKIP
>>> embeddings = {"cellplm_fine_tuned": integrator.get_latent_representation(adata)}       # doctest: +SKIP
>>> score_integration(adata, "donor", "cell_type", embeddings=embeddings).to_frame()       # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .._memory import PeakMemory
from ..baselines.integration import batches_of
from ..baselines.registry import baselines_for, run_baseline
from ..data.sets import InputSpec
from ..data.validate import require_anndata
from ..metrics.integration import BATCH, BIO, IntegrationScores, integration_scores
from ..model import CellPLM
from ..module import CellPLMModule
from ._saved import settings_dataclass
from .base import FineTunedTask, resolve_spec
from .denoising import DenoisingFitSummary, DenoisingObjective, DenoisingRecipe, hold_out_for_validation
from .result import MethodScore, TaskResult

logger = logging.getLogger(__name__)

SETTINGS_FILE = "integrator.json"
FORMAT = "opencellplm-integrator"
#: The scores of an integration row, in table order: bio conservation, batch correction, the aggregates.
SCORES = (*BIO, *BATCH, "bio_conservation", "batch_correction", "overall")


class IntegrationRecipe(DenoisingRecipe):
    """Fine-tuning settings of a :class:`BatchIntegrator`: those of denoising (the pretraining objective on the
    user's cell sets, the best state picked by the RMSE on counts hidden from the input)."""


class BatchIntegrator(FineTunedTask):
    """A CellPLM model fine-tuned on cells of several batches, its decoder given each cell's batch.

    :meth:`fit` gives the decoder a new batch table (one row per batch of the data, each starting at the mean of
    the pretrained rows, which is what the decoder gives a cell without a batch; random rows for a model from
    scratch or one pretrained without a batch table) and fine-tunes every weight
    with the pretraining objective on cell sets that never mix batches; :meth:`get_latent_representation` embeds
    with the fine-tuned encoder, which never sees the batch. Before :meth:`fit`, a pretrained integrator embeds
    zero-shot.
    """

    recipe_type = IntegrationRecipe
    noun = "batch integrator"
    settings_file, format = SETTINGS_FILE, FORMAT
    zero_shot = True
    needs_decoder = "give its decoder the batches"
    recipe: IntegrationRecipe
    summary: DenoisingFitSummary | None

    def __init__(self, base: CellPLM, *, pretrained: bool, recipe: IntegrationRecipe | None = None):
        super().__init__(base, pretrained=pretrained, recipe=recipe)
        self.batch_key: str | None = None
        self.batches: list[str] = []

    def fit(
        self, adata: AnnData, batch_key: str, *, device: str | None = None, spec: InputSpec | None = None, **spec_fields
    ) -> BatchIntegrator:
        """Fine-tune on the counts of ``adata``, each cell's batch in ``obs[batch_key]`` given to the decoder.

        Cells attend to each other within a batch only: the cell sets are the batches (``sample_key`` defaults to
        ``batch_key``; a ``sample_key`` given must nest in it). Calling ``fit`` again starts over from the base
        model (the batches may differ). Returns ``self``, with :attr:`summary`.
        """
        require_anndata(adata)
        started = time.perf_counter()
        batches = batches_of(adata, batch_key)
        input_spec = resolve_spec(spec, spec_fields)
        if input_spec.sample_key is None:
            input_spec = replace(input_spec, sample_key=batch_key)
        else:
            _check_nested(adata, input_spec.sample_key, batches, batch_key)
        names = sorted(set(batches))
        ids = np.searchsorted(names, batches)
        recipe = self.recipe
        sets = self.base.cell_sets(adata, input_spec, require_counts=True, warn_stacklevel=3)
        training_counts, hidden = hold_out_for_validation(sets.counts(), recipe)
        train = sets.with_counts(training_counts).with_batches(ids)

        config = recipe.model_config(self.base.config)
        config = replace(config, decoder=replace(config.decoder, n_batches=len(names)))
        torch.manual_seed(recipe.seed)
        module = CellPLMModule(config)
        if self.pretrained:
            module.load_state_dict(_with_batch_rows(self.base.module.state_dict(), module.state_dict()))
        objective = DenoisingObjective(
            train, hidden, sets_per_step=recipe.sets_per_step, seed=recipe.seed, masking=recipe.masking()
        )
        summary = self._fine_tune(module, objective, device=device, compete_with_start=True)
        self.module, self.spec, self.batch_key, self.batches = module.eval(), input_spec, batch_key, names
        self.summary = DenoisingFitSummary.of(summary, self.pretrained, train, hidden, started)
        logger.info(
            "batch integrator fitted on %d batches: validation RMSE %.4f at the start, best %s after %d steps",
            len(names),
            summary.start,
            "none" if summary.best is None else f"{summary.best:.4f}",
            summary.steps,
        )
        return self

    def get_latent_representation(self, adata: AnnData, *, spec: InputSpec | None = None, **spec_fields) -> np.ndarray:
        """Cell embeddings of the fitted encoder (see :meth:`opencellplm.CellPLM.get_latent_representation`),
        read with the input settings of :meth:`fit` unless others are given; writes nothing."""
        input_spec = resolve_spec(spec, spec_fields, self.spec)
        return self._model().get_latent_representation(adata, **input_spec.to_dict())

    def _model(self) -> CellPLM:
        """The weights in use as a :class:`~opencellplm.CellPLM` (the base's vocabulary, rule and identity)."""
        module = self._require_module()
        return CellPLM(module, self.base.genes, meta=self.base.meta, source=self.base.source, device=self.base.device)

    def embed(
        self, adata: AnnData, *, key_added: str = "X_cellplm_integrated", spec: InputSpec | None = None, **spec_fields
    ) -> BatchIntegrator:
        """Write the embeddings to ``adata.obsm[key_added]`` and what made them to ``adata.uns['cellplm'][key_added]``
        (the input settings, the checkpoint, and the batch key and batches the integrator was fitted on; see
        :meth:`opencellplm.CellPLM.embed`). Returns ``self``."""
        require_anndata(adata)
        self._refuse_view(adata, "get_latent_representation()")
        input_spec = resolve_spec(spec, spec_fields, self.spec)
        self._model().embed(adata, key_added=key_added, **input_spec.to_dict())
        record = adata.uns["cellplm"][key_added]
        record["integration"] = {"fitted": self.fitted, "batch_key": self.batch_key, "batches": list(self.batches)}
        return self

    def _settings(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "batch_key": self.batch_key, "batches": self.batches}

    def _restore(self, directory: Path, settings: dict[str, Any]) -> None:
        self.spec = settings_dataclass(directory / SETTINGS_FILE, settings, "spec", InputSpec)
        self.batch_key, self.batches = settings.get("batch_key"), list(settings.get("batches") or [])
        self.module = self.base.module if self.batches else None


def _check_nested(adata: AnnData, sample_key: str, batches: np.ndarray, batch_key: str) -> None:
    if sample_key not in adata.obs:
        raise KeyError(f"sample_key {sample_key!r} is not an obs column; adata.obs has {list(adata.obs.columns)}")
    per_sample = pd.Series(batches).groupby(adata.obs[sample_key].astype(str).to_numpy()).nunique()
    mixed = per_sample.index[per_sample > 1].tolist()
    if mixed:
        raise ValueError(
            f"samples {mixed[:5]} hold cells of several batches (obs[{batch_key!r}]): a cell set must hold one batch, "
            "so that its decoder is given one; leave sample_key out (the sets are then the batches)"
        )


def _with_batch_rows(pretrained: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The pretrained weights, each batch table replaced by one of the target's size whose every row is the mean of
    the pretrained rows (a model without a batch table keeps the target's fresh one)."""
    out = dict(pretrained)
    for key, value in target.items():
        if ".covariates.batch.embedding." in key:
            old = pretrained.get(key)
            out[key] = value.clone() if old is None else old.mean(0, keepdim=True).expand_as(value).clone()
        elif key not in out:  # the batch covariate's activation and norm, new when the pretrained had no batch
            out[key] = value
    return out


@dataclass(frozen=True)
class IntegrationResult(TaskResult):
    """The scib scores of each embedding of one data set (see :func:`score_integration`).

    Attributes
    ----------
    methods
        One :class:`~opencellplm.tasks.result.MethodScore` per embedding (the given ones first), its scores
        :data:`SCORES`.
    skipped
        Baselines that did not run, with the reason.
    detail
        Each method's :class:`~opencellplm.metrics.integration.IntegrationScores`.
    n_cells, n_batches, n_cell_types
        What was scored: the most cells any method was scored on (each method's own count is in its ``params``:
        cells a model left out, NaN rows, are left out of its scores), the batches and the labelled cell types.
    settings
        ``batch_key``, ``labels_key``, ``seed``, ``n_neighbors``.
    embeddings
        Each method's embedding (cells x dims), kept for plots; not part of :meth:`to_dict`.
    """

    methods: list[MethodScore]
    skipped: dict[str, str]
    detail: dict[str, IntegrationScores]
    n_cells: int
    n_batches: int
    n_cell_types: int
    settings: dict[str, Any] = field(default_factory=dict)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """One row per method: the six scores, the aggregates, seconds and peak memory."""
        rows = [{"method": m.method} | m.scores | {"seconds": m.seconds, "peak_mb": m.peak_mb} for m in self.methods]
        return pd.DataFrame(rows).set_index("method")

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "embeddings"}
        out["detail"] = {name: scores.to_dict() for name, scores in self.detail.items()}
        return out


def score_integration(
    adata: AnnData,
    batch_key: str,
    labels_key: str,
    *,
    embeddings: dict[str, np.ndarray] | None = None,
    seconds: dict[str, float] | None = None,
    peak_mb: dict[str, float] | None = None,
    layer: str | None = None,
    baselines: tuple[str, ...] | None = ("pca", "scvi", "harmony", "scanorama"),
    seed: int = 0,
    n_neighbors: int = 15,
) -> IntegrationResult:
    """Score ``embeddings`` (name -> cells x dims, rows in ``adata`` order) and the baselines' on the scib metrics.

    Parameters
    ----------
    adata
        Counts (``X`` or ``layers[layer]``, for the baselines), ``obs[batch_key]`` (two batches or more) and
        ``obs[labels_key]`` (cell types; cells without one are left out of the scores).
    embeddings, seconds, peak_mb
        The embeddings to score (e.g. CellPLM's), and what making each took, for the table.
    baselines
        Names in the ``integration`` registry; a missing package or a failure is a skipped row saying why.
    seed
        The baselines' seed and Leiden's.
    """
    require_anndata(adata)
    batches = batches_of(adata, batch_key)
    if labels_key not in adata.obs:
        raise KeyError(f"labels_key {labels_key!r} is not an obs column; adata.obs has {list(adata.obs.columns)}")
    labels = adata.obs[labels_key].to_numpy()
    known = pd.unique(pd.Series(labels).dropna())
    if len(known) < 2:
        raise ValueError(f"obs[{labels_key!r}] holds {len(known)} cell type(s); the scores need at least 2")
    representations = {name: np.asarray(e) for name, e in (embeddings or {}).items()}
    for name, embedding in representations.items():  # before any baseline runs
        if embedding.ndim != 2 or len(embedding) != adata.n_obs:
            raise ValueError(f"embedding {name!r} has shape {embedding.shape}; it needs one row per cell of adata")
    chosen = baselines_for("integration", baselines)
    methods, skipped, detail, kept = [], {}, {}, {}
    seconds, peak_mb = dict(seconds or {}), dict(peak_mb or {})
    params: dict[str, dict[str, Any]] = {}
    for name, baseline in chosen.items():
        result, why = run_baseline(baseline, adata, batch_key=batch_key, layer=layer, seed=seed)
        if why is not None:
            skipped[name] = why
            logger.warning("baseline %s skipped: %s", name, why)
            continue
        representations[name] = result.prediction
        seconds[name], peak_mb[name], params[name] = result.seconds, result.peak_mb, result.params
    for name, embedding in representations.items():
        try:
            scores = integration_scores(embedding, labels, batches, n_neighbors=n_neighbors, seed=seed)
        except ValueError as err:  # e.g. an embedding that left out every cell of a batch: a row saying so
            skipped[name] = f"not scored: {err}"
            logger.warning("%s not scored: %s", name, err)
            continue
        detail[name], kept[name] = scores, embedding
        values = {key: getattr(scores, key) for key in SCORES}
        # n_cells: the cells this method was scored on (those it embedded, with a label)
        method_params = params.get(name, {}) | {"n_cells": scores.n_cells}
        methods.append(MethodScore(name, values, seconds.get(name), params=method_params, peak_mb=peak_mb.get(name)))
        logger.info(
            "%s: overall %.3f (bio %.3f, batch %.3f)",
            name,
            scores.overall,
            scores.bio_conservation,
            scores.batch_correction,
        )
    if not methods:
        raise ValueError(f"nothing was scored: no embeddings given, or none could be scored ({skipped})")
    return IntegrationResult(
        methods=methods,
        skipped=skipped,
        detail=detail,
        n_cells=max(scores.n_cells for scores in detail.values()),
        n_batches=len(set(batches)),
        n_cell_types=len(known),
        settings={"batch_key": batch_key, "labels_key": labels_key, "seed": seed, "n_neighbors": n_neighbors},
        embeddings=kept,
    )


def timed_embedding(make, device: Any = None) -> tuple[np.ndarray, float, float]:
    """``make()``'s embedding, its seconds and peak memory on ``device`` (default the CPU's resident memory; see
    :class:`~opencellplm._memory.PeakMemory`), for the ``seconds`` and ``peak_mb`` of a score."""
    with PeakMemory(device) as peak:
        tic = time.perf_counter()
        embedding = make()
        seconds = time.perf_counter() - tic
    return embedding, seconds, peak.mb
