"""Pretraining: masked cell modelling on a prepared corpus, as an objective of the shared trainer.

Each optimizer step takes ``sets_per_step`` cell sets of the corpus (see
:class:`~opencellplm.train.plan.DataPlan`); in each, cells are dropped and genes masked (the
objective's :class:`~opencellplm.config.MaskingConfig`, passed to the module's forward), and the
loss is the NB reconstruction with its masked-entry term plus the floored GMVAE terms. Validation
scores the same loss on held-out sets with fixed masks. Rank 0 saves the best validated weights to
``out/model`` in our checkpoint format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .._files import cannot_write, json_object, refuse_inputs
from ..config import ConfigError, MaskingConfig, ModelConfig, TrainConfig
from ..data.corpus import Corpus
from ..io import save_checkpoint
from ..module import CellPLMModule
from ..module.losses import LossOutput
from ..module.pretrain import reconstruction_loss
from .plan import DataPlan, SetRef
from .probe import NeighbourhoodProbe
from .schedule import set_seed
from .trainer import (
    CONFIG_FILE,
    EVALUATION_STEP,
    MODEL_DIR,
    STEPS_DIR,
    Autocast,
    Distributed,
    Objective,
    ParamGroup,
    Trainer,
    check_run_folder,
)

logger = logging.getLogger(__name__)


def split_masking(model: dict[str, Any]) -> tuple[dict[str, Any], MaskingConfig]:
    """The model settings of a configuration without their ``"masking"`` section, and that section as the
    pretraining objective's :class:`~opencellplm.config.MaskingConfig` (its defaults when absent)."""
    model = dict(model)
    masking = model.pop("masking", None)
    if masking is None:
        return model, MaskingConfig()
    if not isinstance(masking, dict):
        raise ConfigError(f"'masking' must be a mapping, got {type(masking).__name__}")
    fields = {f.name for f in dataclasses.fields(MaskingConfig)}
    unknown = sorted(set(masking) - fields)
    if unknown:
        raise ConfigError(f"unknown key(s) in 'masking': {unknown}; known keys: {sorted(fields)}")
    return model, MaskingConfig(**masking)


def model_config_for(corpus: Corpus, model: dict[str, Any]) -> ModelConfig:
    """Complete a model config for a corpus: the vocabulary size and covariate table sizes come from it
    (a ``"masking"`` section, the objective's, is left out: see :func:`split_masking`)."""
    model, _ = split_masking(model)
    if model.get("n_genes") not in (None, len(corpus.vocabulary)):
        raise ConfigError(f"n_genes={model['n_genes']} but the corpus vocabulary has {len(corpus.vocabulary)} genes")
    model["n_genes"] = len(corpus.vocabulary)
    decoder = model.get("decoder", {})
    if decoder is not None:
        model["decoder"] = {
            "n_batches": len(corpus.manifest["batches"]),
            "n_datasets": len(corpus.manifest["datasets"]),
        } | dict(decoder)
    return ModelConfig.from_dict(model)


class PretrainObjective(Objective):
    """Masked NB reconstruction + GMVAE terms on the sets of a corpus."""

    monitor = "val_loss"
    objective_name = "nb_loss"

    def __init__(
        self,
        corpus: Corpus,
        config: ModelConfig,
        train: TrainConfig,
        masking: MaskingConfig,
        probe: NeighbourhoodProbe | None = None,
        gene_embedding: np.ndarray | None = None,
        keep_steps: bool = False,
        decoder_bias: np.ndarray | None = None,
    ):
        if not isinstance(masking, MaskingConfig):
            raise TypeError(f"masking must be a MaskingConfig, got {type(masking).__name__}")
        if masking.cell_rate == 0 or masking.gene_rate == 0:
            raise ConfigError("pretraining needs masking.cell_rate > 0 and masking.gene_rate > 0")
        if config.decoder is None:
            raise ConfigError("pretraining needs the NB decoder (decoder must not be null)")
        self.corpus, self.config, self.train, self.masking = corpus, config, train, masking
        self.probe = probe
        self.keep_steps = keep_steps
        # a resumed run must start from the same tables: their fingerprints are part of the settings
        self.init_sha256 = {
            f"{name}_sha256": hashlib.sha256(np.ascontiguousarray(table)).hexdigest()
            for name, table in (("gene_embedding", gene_embedding), ("decoder_bias", decoder_bias))
            if table is not None
        }
        if probe is not None:  # the best state is the one whose zero-shot embedding scores best
            self.monitor, self.maximize = probe.select, True
        self.plan = DataPlan(
            tuple(s["n_sets"] for s in corpus.shards),
            train.sets_per_step,
            train.val_fraction,
            train.shuffle_window,
            train.seed,
        )

    def global_batch(self, step: int) -> list[SetRef]:
        return self.plan.global_batch(step)

    def param_groups(self, module: nn.Module) -> list[ParamGroup]:
        """One group at the run's rate; with ``train.encoder_lr_ratio < 1``, the NB decoder at the run's rate and
        the rest at that share of it."""
        if self.train.encoder_lr_ratio == 1.0:
            return super().param_groups(module)
        named = list(module.named_parameters())
        decoder = [p for name, p in named if name.startswith("decoder.")]
        encoder = [p for name, p in named if not name.startswith("decoder.")]
        return [ParamGroup("decoder", decoder), ParamGroup("encoder", encoder, self.train.encoder_lr_ratio)]

    def loss(self, model: nn.Module, item: SetRef, device: torch.device, autocast: Autocast) -> tuple[LossOutput, int]:
        batch = self.corpus.cell_set(*item).to(device)
        with autocast():  # the decoder's output layer on the set's genes only, in their order: what the loss reads
            out = model(batch, corrupt=self.masking, decode_genes=batch.gene_index)
        return reconstruction_loss(out, masked_term=self.masking.masked_term), len(out.kept_cells)

    def evaluate(self, module: nn.Module, world: Distributed, autocast: Autocast) -> dict[str, float]:
        """Mean masked-reconstruction loss over the held-out sets, with fixed masks and no dropout."""
        refs = self.plan.validation
        total, count = 0.0, 0.0
        for position in range(world.rank, len(refs), world.world_size):
            batch = self.corpus.cell_set(*refs[position]).to(world.device)
            torch.manual_seed(set_seed(self.train.seed, EVALUATION_STEP, position))
            with autocast():
                out = module(batch, corrupt=self.masking, decode_genes=batch.gene_index)
            total += reconstruction_loss(out, masked_term=self.masking.masked_term).total.item()
            count += 1
        total, count = world.sum([total, count])
        metrics = {"val_loss": total / count}
        if self.probe is not None:
            metrics |= self.probe(module, self.corpus.vocabulary)
        return metrics

    def settings(self) -> dict[str, Any]:
        manifest = self.corpus.manifest
        corpus = {k: manifest[k] for k in ("created", "n_cells", "n_sets", "n_genes")}
        # The masking sits in the model section, as in the configuration files (and runs before it left
        # ModelConfig): a resume with another masking is refused like one with another architecture.
        model = self.config.to_dict() | {"masking": dataclasses.asdict(self.masking)}
        extra = {"probe": self.probe.settings()} if self.probe else {}
        if self.init_sha256:
            extra["init"] = dict(self.init_sha256)
        return {"model": model, "corpus": corpus} | extra

    def on_improved(self, module: nn.Module, step: int, history: list[dict[str, Any]], out: Path | None) -> None:
        self._save(module, step, history, out / MODEL_DIR)

    def on_evaluated(self, module: nn.Module, step: int, history: list[dict[str, Any]], out: Path | None) -> None:
        if self.keep_steps and out is not None:
            self._save(module, step, history, out / STEPS_DIR / f"step-{step:07d}")

    def _save(self, module: nn.Module, step: int, history: list[dict[str, Any]], folder: Path) -> None:
        manifest = self.corpus.manifest
        meta = {
            "source": "opencellplm pretrain",
            "step": step,
            "val_loss": history[-1]["val_loss"] if history else None,
            "selected_by": self.monitor,
            "val_history": history,
            "corpus": {
                "n_cells": manifest["n_cells"],
                "n_sets": manifest["n_sets"],
                "datasets": [d["file"] for d in manifest["datasets"]],
            },
            "train": self.train.to_dict(),
            "masking": dataclasses.asdict(self.masking),
        }
        save_checkpoint(folder, module, self.corpus.vocabulary, meta=meta, overwrite=True)


def pretrain(
    corpus_dir: str | Path,
    out: str | Path,
    *,
    model: dict[str, Any],
    train: TrainConfig,
    resume: bool = False,
    device: str | None = None,
    probe: NeighbourhoodProbe | None = None,
    gene_embedding: np.ndarray | None = None,
    keep_steps: bool = False,
    decoder_bias: np.ndarray | None = None,
) -> dict[str, Any]:
    """Pretrain a CellPLM model on a prepared corpus; returns the run summary (the content of ``summary.json``:
    :meth:`TrainSummary.to_dict <opencellplm.train.trainer.TrainSummary.to_dict>`).

    Parameters
    ----------
    corpus_dir
        A directory written by ``opencellplm prepare-corpus``.
    out
        Run directory: ``state.pt`` (resumable), ``metrics.jsonl``, ``summary.json`` and ``model/``
        (the weights with the best validation loss, in our checkpoint format). The run locks it
        (``out/.lock``) while it lasts: a second run into it fails with
        :class:`~opencellplm.train.state.RunInUseError` (a ``FileExistsError``).
    model
        Model hyperparameters (:class:`~opencellplm.config.ModelConfig` keys); ``n_genes`` and the
        decoder's covariate sizes are taken from the corpus when absent. Its ``"masking"`` section
        (:class:`~opencellplm.config.MaskingConfig` keys, defaults when absent) goes to the objective.
    train
        Training settings.
    resume
        Continue from ``out/state.pt``.
    device
        ``"cpu"``, ``"cuda"``, ... (default: this process's GPU when there is one, else the CPU).
    probe
        Keep the state whose zero-shot embedding scores best on this probe (its ``select`` metric, see
        :class:`~opencellplm.train.probe.NeighbourhoodProbe`) instead of the lowest validation loss.
    gene_embedding
        Initial gene-embedding table, (vocabulary size, hidden_dim) in the corpus vocabulary's order (e.g. from
        :func:`gene_embedding_from_pca`); default: the random initialisation.
    decoder_bias
        Initial output bias of the NB decoder, (vocabulary size,) in the corpus vocabulary's order (e.g. from
        :func:`decoder_bias_from_corpus`); default: the random initialisation.
    keep_steps
        Also keep the weights of every evaluated step, in ``out/steps/step-NNNNNNN/`` (our checkpoint format), for
        ``benchmarks/pretraining_diagnostics.py``.
    """
    out = refuse_inputs(out, [corpus_dir], kind="run folder")  # before any process starts
    check_run_folder(out, resume=resume)
    world = Distributed.start(device)
    try:
        corpus = Corpus(corpus_dir, cache_shards=train.shuffle_window)
        model, masking = split_masking(model)
        config = model_config_for(corpus, model)
        objective = PretrainObjective(
            corpus,
            config,
            train,
            masking,
            probe=probe,
            gene_embedding=gene_embedding,
            keep_steps=keep_steps,
            decoder_bias=decoder_bias,
        )
        torch.manual_seed(train.seed)  # the same initial weights in every process
        module = CellPLMModule(config)
        if gene_embedding is not None:
            expected = tuple(module.embedder.gene_embedding.shape)
            if tuple(gene_embedding.shape) != expected:
                raise ValueError(f"gene_embedding has shape {tuple(gene_embedding.shape)}, the model needs {expected}")
            module.embedder.gene_embedding.data.copy_(torch.as_tensor(gene_embedding, dtype=torch.float32))
        if decoder_bias is not None:
            expected = tuple(module.decoder.mean.bias.shape)
            if tuple(np.shape(decoder_bias)) != expected:
                raise ValueError(f"decoder_bias has shape {tuple(np.shape(decoder_bias))}, the model needs {expected}")
            module.decoder.mean.bias.data.copy_(torch.as_tensor(decoder_bias, dtype=torch.float32))
        with cannot_write(out, "the run folder"):  # a read-only or full disk: one line naming the folder
            trainer = Trainer(module, objective, train, world, out=out, resume=resume)
            if keep_steps and not resume and world.main:  # the initial weights, the first point of the diagnostics
                objective.on_evaluated(module, 0, [], out)
            if world.main:
                logger.info(
                    "pretraining %s parameters on %d processes, %s, precision %s",
                    f"{module.n_parameters():,}",
                    world.world_size,
                    world.device,
                    "bf16" if trainer.dtype else "fp32",
                )
            summary = trainer.fit().to_dict()
        world.barrier()  # no process tears the group down while another still talks to it
        return summary
    finally:
        world.stop()


def recorded_settings(out: str | Path) -> tuple[dict[str, Any], TrainConfig]:
    """The model settings and the training settings the run in ``out`` started with (its ``config.json``), so
    that a resume needs no settings repeated."""
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no run to resume: {path.name} not found")
    try:
        saved = json.loads(path.read_text())
        return dict(saved["model"]), TrainConfig.from_dict(saved["train"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not the settings of a run ({type(err).__name__}: {err})") from None


def recorded_init(out: str | Path) -> dict[str, str]:
    """The fingerprints of the tables the run in ``out`` started from (``gene_embedding_sha256``,
    ``decoder_bias_sha256``; empty when it started at random)."""
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no run to resume: {path.name} not found")
    init = (json_object(path) or {}).get("init")
    return dict(init) if isinstance(init, dict) else {}


def gene_embedding_from_pca(
    corpus_dir: str | Path, dim: int, *, max_cells: int = 50_000, seed: int = 0, balance_datasets: bool = False
) -> np.ndarray:
    """A (vocabulary, ``dim``) gene-embedding table from the corpus: the top ``dim`` right singular vectors of
    its log1p counts per 10,000 (randomized SVD of up to ``max_cells`` cells), scaled to the random
    initialisation's standard deviation (0.005).

    With ``input_scaling="log1p_cp10k"`` a cell's gene sum then starts as its projection on the corpus's
    principal axes: the standard PCA view of the cells, which pretraining refines instead of rediscovering.

    ``balance_datasets``: centre each data set's cells on that data set's mean and give every data set the same
    total weight (its rows scaled by ``1 / sqrt(its cells)``). Pooled and uncentred (the default, the first
    ``cellplm-small``'s start), the axes spend themselves on the mean, on how data sets differ from each other and
    on the largest data sets: on the recipe's corpus (pancreas 4% of the cells, blood 36%), a linear projection on
    the pooled axes clusters a held-out pancreas donor at ARI 0.60 against 0.70 on the balanced ones, Baron human
    0.41 against 0.59, PBMC 68k 0.61 on both (best Leiden ARI; own-data PCA: 0.87, 0.83-0.89, 0.53).
    """
    corpus = Corpus(corpus_dir)
    n_genes = len(corpus.vocabulary)
    rng = np.random.default_rng(seed)
    refs = [(shard, position) for shard, info in enumerate(corpus.shards) for position in range(info["n_sets"])]
    rows, sources, total = [], [], 0
    for index in rng.permutation(len(refs)):
        batch = corpus.cell_set(*refs[index])  # CSR counts over the set's genes; gene_index: their vocabulary rows
        csr = batch.counts
        columns = batch.gene_index.numpy()[csr.col_indices().numpy()]
        x = sp.csr_matrix(
            (csr.values().numpy().astype(np.float64), columns, csr.crow_indices().numpy()),
            shape=(csr.shape[0], n_genes),
        )
        x = sp.diags(1e4 / np.maximum(np.asarray(x.sum(1)).ravel(), 1.0)) @ x
        x.data = np.log1p(x.data)
        rows.append(x)
        sources.append(batch.dataset.numpy())
        total += x.shape[0]
        if total >= max_cells:
            break
    x = sp.vstack(rows).tocsr()
    if min(x.shape) < dim:
        raise ValueError(
            f"the corpus gives {x.shape[0]} cells over {x.shape[1]} genes: too few for {dim} principal axes "
            "(the gene-embedding width); use a smaller hidden_dim or a larger corpus"
        )
    if balance_datasets:
        _, group = np.unique(np.concatenate(sources), return_inverse=True)
        vt = _top_axes_within_groups(x, group, dim, seed=seed)
    else:
        from sklearn.utils.extmath import randomized_svd

        _, _, vt = randomized_svd(x, dim, random_state=seed)
    table = vt.T.astype(np.float32)
    return table * (0.005 / table.std())


def _top_axes_within_groups(
    x: sp.csr_matrix, group: np.ndarray, k: int, *, seed: int, n_iter: int = 7, oversample: int = 10
) -> np.ndarray:
    """The top ``k`` right singular vectors (k, genes) of ``A = W (x - means[group])``: every row centred on its
    group's mean, group ``j``'s rows weighted ``1 / sqrt(n_j)`` so that groups weigh alike.

    A randomized SVD (Halko, Martinsson and Tropp 2011, with power iterations) that never forms ``A``: centring
    would make the sparse ``x`` dense (50,000 cells x 20,000 genes: 4 GB in float32).
    """
    n_groups = int(group.max()) + 1
    sizes = np.bincount(group, minlength=n_groups).astype(np.float64)
    members = sp.csr_matrix((np.ones(len(group)), (group, np.arange(len(group)))), shape=(n_groups, len(group)))
    means = (sp.diags(1.0 / sizes) @ members @ x).toarray()  # (groups, genes)
    weight = (1.0 / np.sqrt(sizes))[group][:, None]

    def times(v: np.ndarray) -> np.ndarray:  # A @ v
        return weight * (x @ v - (means @ v)[group])

    def transposed_times(u: np.ndarray) -> np.ndarray:  # A.T @ u
        weighted = weight * u
        per_group = np.zeros((n_groups, u.shape[1]))
        np.add.at(per_group, group, weighted)
        return x.T @ weighted - means.T @ per_group

    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(times(rng.standard_normal((x.shape[1], min(k + oversample, *x.shape)))))
    for _ in range(n_iter):
        z, _ = np.linalg.qr(transposed_times(q))
        q, _ = np.linalg.qr(times(z))
    _, _, vt = np.linalg.svd(transposed_times(q).T, full_matrices=False)
    vt = vt[:k]
    return vt * np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])[:, None]  # a sign that does not depend on BLAS


def decoder_bias_from_corpus(corpus_dir: str | Path, *, max_cells: int = 50_000, seed: int = 0) -> np.ndarray:
    """A (vocabulary,) start for the NB decoder's output bias: the log of each gene's mean share of a cell's
    counts over the corpus (cells of up to ``max_cells``, in seeded random sets; a gene's mean over the cells whose
    set measures it), genes never counted at the smallest share seen.

    Why: a decoder's gene shares are ``softmax(W a + b)``. Started at the usual small ``b``, every gene begins
    with the same share (1 / vocabulary size), while the corpus's mean shares span about six orders of magnitude.
    Adam moves a parameter by at most about the learning rate per step, so ``b`` cannot cover those ~15 nats in
    a short run: the mean profile is then carried by ``W a`` on a constant ``a``, which every cell must share,
    and the decoder ignores the cell (the collapse of the first ``cellplm-small``; see
    ``benchmarks/pretraining_diagnostics.py``). Started here, the mean profile is given and ``W a`` is free to
    model how cells differ.
    """
    corpus = Corpus(corpus_dir)
    n_genes = len(corpus.vocabulary)
    rng = np.random.default_rng(seed)
    refs = [(shard, position) for shard, info in enumerate(corpus.shards) for position in range(info["n_sets"])]
    shares, measured, total = np.zeros(n_genes), np.zeros(n_genes), 0
    for index in rng.permutation(len(refs)):
        batch = corpus.cell_set(*refs[index])
        csr = batch.counts
        x = sp.csr_matrix(
            (csr.values().numpy().astype(np.float64), csr.col_indices().numpy(), csr.crow_indices().numpy()),
            shape=tuple(csr.shape),
        )
        depth = np.asarray(x.sum(1)).ravel()
        counted = depth > 0
        rows = sp.diags(1.0 / depth[counted]) @ x[counted]
        genes = batch.gene_index.numpy()
        shares[genes] += np.asarray(rows.sum(0)).ravel()
        measured[genes] += int(counted.sum())
        total += int(counted.sum())
        if total >= max_cells:
            break
    mean = np.divide(shares, measured, out=np.zeros(n_genes), where=measured > 0)
    floor = mean[mean > 0].min() if (mean > 0).any() else 1.0 / n_genes
    return np.log(np.maximum(mean, floor)).astype(np.float32)


__all__ = [
    "PretrainObjective",
    "decoder_bias_from_corpus",
    "gene_embedding_from_pca",
    "model_config_for",
    "pretrain",
    "split_masking",
]
