"""The pretraining loop: one process, or many under ``torchrun`` (DistributedDataParallel).

Each optimizer step takes ``sets_per_step`` cell sets (see :class:`~opencellplm.train.plan.DataPlan`);
a process computes its share of them, one forward per set, with the random draws of each set
(cell drop, gene masks, dropout, latent sample) seeded by ``(seed, step, position in the batch)``.
A run is therefore the same whatever the number of processes, and a resumed run continues exactly
where its last checkpoint left it. Rank 0 writes the metrics log, the checkpoints and the model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..config import ConfigError, ModelConfig, TrainConfig
from ..data.corpus import Corpus
from ..io import save_checkpoint
from ..module import CellPLMModule
from .plan import DataPlan
from .schedule import lr_factor, set_seed
from .state import RunInUseError, load_state, lock_run_dir, rng_state, save_state, set_rng_state

logger = logging.getLogger(__name__)

METRICS_FILE, SUMMARY_FILE, MODEL_DIR = "metrics.jsonl", "summary.json", "model"
VALIDATION_STEP = -1  # the step index that seeds validation masks (the same at every evaluation)


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
    world = _Distributed.start(device)
    try:
        run = _Run(Path(corpus_dir), Path(out), model, train, world, resume)
        try:
            return run.fit()
        finally:
            run.close()
    finally:
        world.stop()


class _Distributed:
    """Rank, world size and device of this process; starts the process group under torchrun."""

    def __init__(self, rank: int, world_size: int, device: torch.device, started: bool):
        self.rank, self.world_size, self.device, self.started = rank, world_size, device, started

    @classmethod
    def start(cls, device: str | None) -> _Distributed:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device {device} requested but CUDA is not available to this torch build")
            if device.index is None:
                device = torch.device("cuda", local_rank)  # one GPU per process under torchrun
            elif world_size > 1 and device.index != local_rank:
                raise ValueError(f"under torchrun each process uses its own GPU; pass --device cuda, not {device}")
            torch.cuda.set_device(device)
        started = False
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            started = True
        return cls(rank, world_size, device, started)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes."""
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def stop(self) -> None:
        if self.started:
            dist.destroy_process_group()


class _Run:
    def __init__(
        self, corpus_dir: Path, out: Path, model: dict[str, Any], train: TrainConfig, world: _Distributed, resume: bool
    ):
        self.world, self.train, self.out = world, train, out
        self.corpus = Corpus(corpus_dir, cache_shards=train.shuffle_window)
        self.config = model_config_for(self.corpus, model)
        if self.config.masking.cell_rate == 0 or self.config.masking.gene_rate == 0:
            raise ConfigError("pretraining needs masking.cell_rate > 0 and masking.gene_rate > 0")
        if self.config.decoder is None:
            raise ConfigError("pretraining needs the NB decoder (decoder must not be null)")
        self.plan = DataPlan(
            tuple(s["n_sets"] for s in self.corpus.shards),
            train.sets_per_step,
            train.val_fraction,
            train.shuffle_window,
            train.seed,
        )
        self.positions = self.plan.local_positions(world.rank, world.world_size)
        torch.manual_seed(train.seed)  # the same initial weights in every process
        self.module = CellPLMModule(self.config).to(world.device)
        decay = [p for p in self.module.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.module.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=train.lr,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, train))
        self.dtype = _autocast_dtype(train.precision, world.device)
        self.step, self.best, self.bad_evals, self.history = 0, math.inf, 0, []
        self._lock = self._lock_out()  # before anything in out is read or written
        try:
            if not resume and any((out / f).exists() for f in ("state.pt", METRICS_FILE, MODEL_DIR)):
                raise FileExistsError(f"{out} holds an earlier run; pass resume=True (--resume) or another --out")
            if world.main:
                self._prepare_out(resume)
            world.barrier()
            if resume:
                self._resume()
            else:
                self._checkpoint()  # step 0: a run that dies before its first checkpoint can still be resumed
            self.model = self.module
            if world.world_size > 1:
                self.model = torch.nn.parallel.DistributedDataParallel(
                    self.module,
                    device_ids=[world.device.index] if world.device.type == "cuda" else None,
                    find_unused_parameters=True,  # e.g. the missing-coordinate vector in spatial sets
                )
        except BaseException:
            self.close()
            raise
        if world.main:
            n_decay = sum(p.numel() for p in decay)
            logger.info(
                "pretraining %s parameters (%s with weight decay) on %d processes, %s, precision %s",
                f"{self.module.n_parameters():,}",
                f"{n_decay:,}",
                world.world_size,
                world.device,
                "bf16" if self.dtype else "fp32",
            )

    # ------------------------------------------------------------------------------- setup
    def _lock_out(self) -> IO[str] | None:
        """Rank 0, the only writer, locks ``out`` for the run; every rank raises when it could not.

        Rank 0's outcome is all-reduced before any barrier, so the other ranks fail with it instead of
        waiting for it at the next barrier.
        """
        lock, error, failed = None, None, 0.0  # failed: 1 the folder is in use, 2 another error
        if self.world.main:
            try:
                lock = lock_run_dir(self.out)
            except Exception as err:
                error, failed = err, 1.0 if isinstance(err, RunInUseError) else 2.0
        (failed,) = self.world.sum([failed])
        if error is not None:
            raise error
        if failed == 1:
            raise RunInUseError(f"{self.out} is in use by another run; wait for it to end or pass another --out")
        if failed:
            raise RuntimeError(f"process 0 could not lock {self.out}; see its error")
        return lock

    def close(self) -> None:
        """Release the lock on ``out`` (rank 0)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _prepare_out(self, resume: bool) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if not resume:
            (self.out / "config.json").write_text(json.dumps(self._settings(), indent=2) + "\n")

    def _settings(self) -> dict[str, Any]:
        """What a resumed run must share with the saved one (the corpus identified by its manifest)."""
        manifest = self.corpus.manifest
        corpus = {k: manifest[k] for k in ("created", "n_cells", "n_sets", "n_genes")}
        return {"model": self.config.to_dict(), "train": self.train.to_dict(), "corpus": corpus}

    def _resume(self) -> None:
        state = load_state(self.out)
        saved, current = state["config"], self._settings()
        changed = sorted(
            f"{part}.{k}" for part in current for k in current[part] if saved.get(part, {}).get(k) != current[part][k]
        )
        if changed:
            raise ConfigError(f"cannot resume: the settings differ from the saved run's in {changed}")
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step, self.best, self.bad_evals = state["step"], state["best"], state["bad_evals"]
        self.history = list(state["history"])
        if self.world.main:  # drop the log lines written after the checkpoint (and a line cut by a crash)
            log = self.out / METRICS_FILE
            if log.exists():
                kept = [line for line in log.read_text().splitlines() if (_step_of(line) or math.inf) <= self.step]
                partial = log.with_name(f".{METRICS_FILE}.partial")
                partial.write_text("".join(f"{line}\n" for line in kept))
                os.replace(partial, log)
            logger.info("resuming at step %d", self.step)

    # -------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        train, world = self.train, self.world
        start_time = time.perf_counter()
        cells_seen = 0
        bar = tqdm(
            total=train.steps, initial=self.step, desc="pretraining", unit="step", disable=not world.main or None
        )
        stopped_early = train.patience > 0 and self.bad_evals >= train.patience  # a resumed, stopped run
        if (self.step >= train.steps or stopped_early) and (self.out / SUMMARY_FILE).exists():
            logger.info("the run in %s has already finished", self.out)
            return json.loads((self.out / SUMMARY_FILE).read_text())
        step_seconds = 0.0  # in optimizer steps only (not validation or checkpoints)
        while self.step < train.steps and not stopped_early:
            lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
            tic = time.perf_counter()
            metrics = self._train_step()
            step_seconds += time.perf_counter() - tic
            cells_seen += metrics["cells"]
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3g}")
            record = {"step": self.step, "lr": lr} | metrics
            if self.step % train.eval_every == 0 or self.step == train.steps:
                record["val_loss"] = self._validate()
                stopped_early = self._track(record["val_loss"])
            if world.main and (self.step % train.log_every == 0 or "val_loss" in record or self.step == train.steps):
                with open(self.out / METRICS_FILE, "a") as log:
                    log.write(json.dumps(record) + "\n")
            if self.step % train.checkpoint_every == 0 or self.step == train.steps or stopped_early:
                self._checkpoint()
        bar.close()
        seconds = time.perf_counter() - start_time
        summary = {
            "steps": self.step,
            "stopped_early": stopped_early,
            "best_val_loss": self.best if self.history else None,
            "val_history": self.history,
            "seconds": round(seconds, 2),
            "train_cells_per_s": round(cells_seen / step_seconds, 1) if step_seconds > 0 else None,
            "processes": world.world_size,
            "device": str(world.device),
            "precision": "bf16" if self.dtype else "fp32",
        }
        if world.main:
            (self.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
            logger.info("pretraining done: %s", {k: v for k, v in summary.items() if k != "val_history"})
        world.barrier()
        return summary

    def _autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.world.device.type, dtype=self.dtype)

    def _train_step(self) -> dict[str, float]:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        refs = self.plan.global_batch(self.step)
        totals = [0.0, 0.0, 0.0, 0.0]  # loss, latent loss, NB objective (each summed over sets), cells
        for i, position in enumerate(self.positions):
            batch = self.corpus.cell_set(*refs[position]).to(self.world.device)
            torch.manual_seed(set_seed(self.train.seed, self.step, position))
            last = i == len(self.positions) - 1
            sync = nullcontext() if last or self.world.world_size == 1 else self.model.no_sync()
            with sync:
                with self._autocast():
                    out = self.model(batch)
                loss = self.module.reconstruction_loss(out)
                (loss.total / len(self.positions)).backward()
            if not torch.isfinite(loss.total):
                raise FloatingPointError(
                    f"non-finite loss at step {self.step + 1} (set {refs[position]}); lower train.lr or use "
                    "precision fp32, then resume from the last checkpoint"
                )
            values = [loss.total.item(), loss.latent.item(), loss.objective.item(), len(out.kept_cells)]
            totals = [a + b for a, b in zip(totals, values)]
        grad_norm = 0.0
        if self.train.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.train.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        loss, latent, objective, cells = self.world.sum(totals)
        n = self.train.sets_per_step
        return {"loss": loss / n, "latent_loss": latent / n, "nb_loss": objective / n, "cells": int(cells)} | (
            {"grad_norm": grad_norm} if self.train.grad_clip > 0 else {}
        )

    @torch.no_grad()
    def _validate(self) -> float:
        """Mean masked-reconstruction loss over the held-out sets, with fixed masks and no dropout."""
        self.module.eval()
        refs = self.plan.validation
        total, count = 0.0, 0.0
        for position in range(self.world.rank, len(refs), self.world.world_size):
            batch = self.corpus.cell_set(*refs[position]).to(self.world.device)
            torch.manual_seed(set_seed(self.train.seed, VALIDATION_STEP + 2**31, position))
            with self._autocast():
                out = self.module(batch, corrupt=True)
            total += self.module.reconstruction_loss(out).total.item()
            count += 1
        total, count = self.world.sum([total, count])
        return total / count

    def _track(self, val_loss: float) -> bool:
        """Record a validation; save the model when it improves; whether to stop early."""
        self.history.append({"step": self.step, "val_loss": val_loss})
        if val_loss < self.best:
            self.best, self.bad_evals = val_loss, 0
            if self.world.main:
                self._save_model()
        else:
            self.bad_evals += 1
        return self.train.patience > 0 and self.bad_evals >= self.train.patience

    def _save_model(self) -> None:
        genes = self.corpus.vocabulary
        meta = {
            "source": "opencellplm pretrain",
            "step": self.step,
            "val_loss": self.best,
            "val_history": self.history,
            "corpus": {
                "n_cells": self.corpus.manifest["n_cells"],
                "n_sets": self.corpus.manifest["n_sets"],
                "datasets": [d["file"] for d in self.corpus.manifest["datasets"]],
            },
            "train": self.train.to_dict(),
        }
        save_checkpoint(self.out / MODEL_DIR, self.module, genes, meta=meta, overwrite=True)

    def _checkpoint(self) -> None:
        if self.world.main:
            save_state(
                self.out,
                {
                    "step": self.step,
                    "model": self.module.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "rng": rng_state(),
                    "best": self.best,
                    "bad_evals": self.bad_evals,
                    "history": self.history,
                    "config": self._settings(),
                },
            )
        self.world.barrier()


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    cpu_bf16 = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return torch.bfloat16 if device.type == "cpu" and cpu_bf16 else None


__all__ = ["model_config_for", "pretrain"]


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
