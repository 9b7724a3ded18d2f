"""Pretraining: masked cell modelling on a prepared corpus, as an objective of the shared trainer.

Each optimizer step takes ``sets_per_step`` cell sets of the corpus (see
:class:`~opencellplm.train.plan.DataPlan`); in each, cells are dropped and genes masked (the
module's training-mode corruption), and the loss is the NB reconstruction with its masked-entry term
plus the floored GMVAE terms. Validation scores the same loss on held-out sets with fixed masks.
Rank 0 saves the best validated weights to ``out/model`` in our checkpoint format.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, ModelConfig, TrainConfig
from ..data.corpus import Corpus
from ..io import save_checkpoint
from ..module import CellPLMModule
from ..module.losses import LossOutput
from .plan import DataPlan, SetRef
from .schedule import set_seed
from .trainer import EVALUATION_STEP, MODEL_DIR, Autocast, Distributed, Objective, Trainer

logger = logging.getLogger(__name__)


def model_config_for(corpus: Corpus, model: dict[str, Any]) -> ModelConfig:
    """Complete a model config for a corpus: the vocabulary size and covariate table sizes come from it."""
    model = dict(model)
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

    def __init__(self, corpus: Corpus, config: ModelConfig, train: TrainConfig):
        if config.masking.cell_rate == 0 or config.masking.gene_rate == 0:
            raise ConfigError("pretraining needs masking.cell_rate > 0 and masking.gene_rate > 0")
        if config.decoder is None:
            raise ConfigError("pretraining needs the NB decoder (decoder must not be null)")
        self.corpus, self.config, self.train = corpus, config, train
        self.plan = DataPlan(
            tuple(s["n_sets"] for s in corpus.shards),
            train.sets_per_step,
            train.val_fraction,
            train.shuffle_window,
            train.seed,
        )

    def global_batch(self, step: int) -> list[SetRef]:
        return self.plan.global_batch(step)

    def loss(self, model: nn.Module, item: SetRef, device: torch.device, autocast: Autocast) -> tuple[LossOutput, int]:
        batch = self.corpus.cell_set(*item).to(device)
        with autocast():
            out = model(batch)
        module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        return module.reconstruction_loss(out), len(out.kept_cells)

    def evaluate(self, module: nn.Module, world: Distributed, autocast: Autocast) -> dict[str, float]:
        """Mean masked-reconstruction loss over the held-out sets, with fixed masks and no dropout."""
        refs = self.plan.validation
        total, count = 0.0, 0.0
        for position in range(world.rank, len(refs), world.world_size):
            batch = self.corpus.cell_set(*refs[position]).to(world.device)
            torch.manual_seed(set_seed(self.train.seed, EVALUATION_STEP, position))
            with autocast():
                out = module(batch, corrupt=True)
            total += module.reconstruction_loss(out).total.item()
            count += 1
        total, count = world.sum([total, count])
        return {"val_loss": total / count}

    def settings(self) -> dict[str, Any]:
        manifest = self.corpus.manifest
        corpus = {k: manifest[k] for k in ("created", "n_cells", "n_sets", "n_genes")}
        return {"model": self.config.to_dict(), "corpus": corpus}

    def on_improved(self, module: nn.Module, step: int, history: list[dict[str, Any]], out: Path | None) -> None:
        manifest = self.corpus.manifest
        meta = {
            "source": "opencellplm pretrain",
            "step": step,
            "val_loss": history[-1]["val_loss"],
            "val_history": history,
            "corpus": {
                "n_cells": manifest["n_cells"],
                "n_sets": manifest["n_sets"],
                "datasets": [d["file"] for d in manifest["datasets"]],
            },
            "train": self.train.to_dict(),
        }
        save_checkpoint(out / MODEL_DIR, module, self.corpus.vocabulary, meta=meta, overwrite=True)


def pretrain(
    corpus_dir: str | Path,
    out: str | Path,
    *,
    model: dict[str, Any],
    train: TrainConfig,
    resume: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """Pretrain a CellPLM model on a prepared corpus; returns the run summary.

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
        decoder's covariate sizes are taken from the corpus when absent.
    train
        Training settings.
    resume
        Continue from ``out/state.pt``.
    device
        ``"cpu"``, ``"cuda"``, ... (default: this process's GPU when there is one, else the CPU).
    """
    world = Distributed.start(device)
    try:
        corpus = Corpus(corpus_dir, cache_shards=train.shuffle_window)
        config = model_config_for(corpus, model)
        objective = PretrainObjective(corpus, config, train)
        torch.manual_seed(train.seed)  # the same initial weights in every process
        module = CellPLMModule(config)
        trainer = Trainer(module, objective, train, world, out=Path(out), resume=resume)
        if world.main:
            logger.info(
                "pretraining %s parameters on %d processes, %s, precision %s",
                f"{module.n_parameters():,}",
                world.world_size,
                world.device,
                "bf16" if trainer.dtype else "fp32",
            )
        return trainer.fit()
    finally:
        world.stop()


__all__ = ["PretrainObjective", "model_config_for", "pretrain"]
