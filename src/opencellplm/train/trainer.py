"""One training loop for pretraining and every fine-tuning task: one process, or many under ``torchrun``.

A run optimises an :class:`Objective`: it says which items (cell sets) each optimizer step uses, how
one item becomes a loss, how to evaluate, and which metric to monitor in which direction. The
:class:`Trainer` does the rest, the same for every task: AdamW with per-group learning rates (frozen
parameters skipped, weight decay on matrices only), warm-up and cosine decay as pure functions of the
step, gradient clipping, bf16 autocast where the hardware has it, DistributedDataParallel, early
stopping on the monitored metric, the best state kept, and, with a run folder, a metrics log, a
summary and an atomic resumable state behind an exclusive lock.

The random draws of each item (cell drop, masks, dropout, latent sample) are seeded by
``(seed, step, position in the global batch)``, so a run is the same whatever the number of
processes, and a resumed run continues exactly where its last checkpoint left it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .._files import json_object
from .._precision import autocast_dtype
from .._threads import thread_settings
from ..config import ConfigError, TrainConfig
from ..module.losses import LossOutput
from .schedule import lr_factor, set_seed
from .state import LOCK_FILE, STATE_FILE, RunInUseError, load_state, lock_run_dir, rng_state, save_state, set_rng_state

logger = logging.getLogger(__name__)

METRICS_FILE, SUMMARY_FILE, MODEL_DIR, CONFIG_FILE = "metrics.jsonl", "summary.json", "model", "config.json"
#: Weights of every evaluated step, kept by runs that ask for them (``pretrain(keep_steps=True)``).
STEPS_DIR = "steps"
#: The step index that seeds evaluation draws, so that every evaluation draws the same masks.
EVALUATION_STEP = -1 + 2**31

Autocast = Callable[[], AbstractContextManager]


@dataclass(frozen=True)
class ParamGroup:
    """Parameters trained at ``lr_scale`` times the run's learning rate (e.g. 0.1 for a pretrained embedder)."""

    name: str
    params: Sequence[nn.Parameter]
    lr_scale: float = 1.0


@dataclass
class TrainSummary:
    """What :meth:`Trainer.fit` did.

    ``best`` is the best value of the monitored metric over the evaluated steps (None when none was evaluated),
    reached at ``best_step``; ``history`` holds every evaluation (``{"step": ..., "val_*": ...}``). With
    ``compete_with_start``, ``start`` is the monitored value of the starting weights and ``kept`` says whether the
    fine-tuned weights beat them (``"fine-tuned"``) or the starting ones were put back (``"start"``).
    :meth:`to_dict` is the run's ``summary.json``.
    """

    monitor: str
    steps: int
    stopped_early: bool
    stopped_by: str | None
    best: float | None
    best_step: int | None
    history: list[dict[str, Any]]
    seconds: float
    train_cells_per_s: float | None
    processes: int
    device: str
    precision: str
    threads: dict[str, Any] = field(default_factory=dict)
    start: float | None = None
    kept: Literal["fine-tuned", "start"] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``summary.json`` form: the best value under ``best_{monitor}``, the evaluations under ``val_history``."""
        out = {
            "steps": self.steps,
            "stopped_early": self.stopped_early,
            "stopped_by": self.stopped_by,
            f"best_{self.monitor}": self.best,
            "best_step": self.best_step,
            "val_history": self.history,
            "seconds": self.seconds,
            "train_cells_per_s": self.train_cells_per_s,
            "processes": self.processes,
            "device": self.device,
            "precision": self.precision,
            "threads": self.threads,
        }
        if self.kept is not None:
            out |= {f"start_{self.monitor}": self.start, "kept": self.kept}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], monitor: str) -> TrainSummary:
        """Read back :meth:`to_dict` (a finished run's ``summary.json``)."""
        return cls(
            monitor=monitor,
            steps=data["steps"],
            stopped_early=data["stopped_early"],
            stopped_by=data.get("stopped_by"),
            best=data.get(f"best_{monitor}"),
            best_step=data.get("best_step"),
            history=list(data.get("val_history", [])),
            seconds=data.get("seconds", 0.0),
            train_cells_per_s=data.get("train_cells_per_s"),
            processes=data.get("processes", 1),
            device=data.get("device", ""),
            precision=data.get("precision", ""),
            threads=data.get("threads", {}),
            start=data.get(f"start_{monitor}"),
            kept=data.get("kept"),
        )


class Objective:
    """What a run optimises; each task subclasses it.

    Subclasses define :meth:`global_batch`, :meth:`loss` and :meth:`evaluate`; ``monitor`` names the
    metric of :meth:`evaluate` that selects the best state (``maximize`` for scores such as F1), and
    ``tiebreak`` (lower is better) breaks its ties: a coarse score such as F1 on a few validation cells
    stays at its best while the validation loss still falls.
    """

    monitor: str = "val_loss"
    maximize: bool = False
    tiebreak: str | None = None
    #: Name of ``LossOutput.objective`` in the metrics log.
    objective_name: str = "objective"

    def global_batch(self, step: int) -> Sequence[Any]:
        """The items (e.g. cell-set references) of optimizer step ``step``: ``sets_per_step`` of them."""
        raise NotImplementedError

    def loss(self, model: nn.Module, item: Any, device: torch.device, autocast: Autocast) -> tuple[LossOutput, int]:
        """Forward one item through ``model`` (under ``autocast()``; under torchrun, the DistributedDataParallel
        wrapper of the module) and return its loss and its number of cells: the loss functions take the forward's
        output, so an objective never needs the module behind the wrapper.

        The random draws are already seeded for this item.
        """
        raise NotImplementedError

    def evaluate(self, module: nn.Module, world: Distributed, autocast: Autocast) -> dict[str, float]:
        """Validation metrics named ``val_*``, ``monitor`` among them (the module itself, never a wrapper, in eval
        mode, no gradients). Seed any random draw with ``set_seed(seed, EVALUATION_STEP, position)`` so every
        evaluation is alike."""
        raise NotImplementedError

    def param_groups(self, module: nn.Module) -> list[ParamGroup]:
        """Learning-rate groups of the module (itself, never a wrapper; default: every parameter at the run's
        rate)."""
        return [ParamGroup("all", list(module.parameters()))]

    def settings(self) -> dict[str, Any]:
        """What a resumed run must share with the saved one besides the train config: ``model`` (its
        config) and whatever identifies the data."""
        return {}

    def on_improved(self, module: nn.Module, step: int, history: list[dict[str, Any]], out: Path | None) -> None:
        """Called on the main process when the monitored metric improves (e.g. to save the model)."""

    def on_evaluated(self, module: nn.Module, step: int, history: list[dict[str, Any]], out: Path | None) -> None:
        """Called on the main process after every evaluation, once the best state is tracked (e.g. to keep
        the weights of every evaluated step)."""


class Distributed:
    """Rank, world size and device of this process; starts the process group under torchrun."""

    def __init__(self, rank: int, world_size: int, device: torch.device, started: bool):
        self.rank, self.world_size, self.device, self.started = rank, world_size, device, started

    @classmethod
    def start(cls, device: str | torch.device | None, *, timeout: timedelta | None = None) -> Distributed:
        """``timeout``: how long a collective (a barrier) waits for the other ranks (torch's default if None)."""
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
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
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


def check_run_folder(out: Path, *, resume: bool) -> None:
    """Refuse to start a run in ``out`` (``resume`` False) unless it is absent, empty, or holds only what a run
    killed before its first checkpoint leaves (its lock, ``config.json`` and the initial weights in ``steps/``): an
    earlier run needs ``resume``,
    and a folder of anything else (a checkpoint, a corpus, a user's files) is not a run folder to write into."""
    if resume or not out.is_dir():
        return
    present = {path.name for path in out.iterdir()}
    if present & {STATE_FILE, METRICS_FILE, MODEL_DIR, SUMMARY_FILE}:
        raise FileExistsError(f"{out} holds an earlier run; pass resume=True (--resume) or another --out")
    others = present - {LOCK_FILE, CONFIG_FILE, STEPS_DIR}
    if CONFIG_FILE in present and not _is_run_config(out / CONFIG_FILE):
        others.add(CONFIG_FILE)
    if STEPS_DIR in present and CONFIG_FILE not in present - others:  # a folder named steps, not a run's
        others.add(STEPS_DIR)
    if others:
        raise FileExistsError(
            f"{out} holds files that are not a training run's ({sorted(others)[:5]}), which a run would mix with "
            f"its own ({CONFIG_FILE}, {STATE_FILE}, {METRICS_FILE}, {MODEL_DIR}/); choose a new or empty folder"
        )


def _is_run_config(path: Path) -> bool:
    settings = json_object(path) or {}
    return isinstance(settings.get("train"), dict) and "model" in settings


class Trainer:
    """Train ``module`` on ``objective``.

    Parameters
    ----------
    module
        The network (its weights are the starting point: pretrained, or freshly initialised).
    objective
        The task's items, loss and evaluation.
    config
        Steps, learning rate and schedule, clipping, evaluation, early stopping, precision, seed.
    world
        This process's rank and device (:meth:`Distributed.start`).
    out
        Run folder: ``config.json``, ``metrics.jsonl``, ``summary.json``, the resumable ``state.pt`` and
        whatever the objective saves (e.g. ``model/``); locked while the run lasts. None keeps the run
        in memory (fine-tuning).
    resume
        Continue from ``out/state.pt``.
    keep_best
        Load the best evaluated weights into ``module`` when the run ends (fine-tuning).
    compete_with_start
        Evaluate the starting weights before the first step (before a resumed run loads its own) and put them
        back at the end when no evaluated step beat them (fine-tuning: a pretrained model that fine-tuning
        only worsens is kept as it was); :attr:`TrainSummary.kept` says which. Implies ``keep_best``.
    """

    def __init__(
        self,
        module: nn.Module,
        objective: Objective,
        config: TrainConfig,
        world: Distributed,
        *,
        out: Path | None = None,
        resume: bool = False,
        keep_best: bool = False,
        compete_with_start: bool = False,
    ):
        if resume and out is None:
            raise ValueError("resume needs a run folder (out)")
        keep_best = keep_best or compete_with_start
        self.module, self.objective, self.config, self.world = module.to(world.device), objective, config, world
        self.out, self.keep_best = out, keep_best
        self.positions = self._positions()  # refused early when the world size does not divide the step
        # fused: one kernel per parameter group instead of a dozen passes over every tensor (CPU, 54M parameters:
        # 0.15 -> 0.03 s a step); the same update to float rounding
        self.fused = world.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(self._optimizer_groups(), lr=config.lr, fused=self.fused or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, config))
        self.dtype = autocast_dtype(config.precision, world.device)
        self.step, self.best, self.bad_evals, self.history = 0, math.inf, 0, []
        self.best_tiebreak, self.best_step = math.inf, None  # the kept state's tie-breaking metric and step
        # With keep_best, the last good weights (best evaluated, else the starting ones) are restored at the end.
        self.best_state = copy.deepcopy(module.state_dict()) if keep_best else None
        self.stopped_by: str | None = None
        #: The starting weights and their monitored value (with ``compete_with_start``).
        self.start_state: dict[str, torch.Tensor] | None = None
        self.start_value: float | None = None
        if compete_with_start:
            self.start_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            self.start_value = self._evaluate()[objective.monitor]
            if world.main:
                logger.info("%s of the starting weights: %.4f", objective.monitor, self.start_value)
        self._lock: IO[str] | None = None
        if out is not None:
            check_run_folder(Path(out), resume=resume)  # before the lock file goes into a folder that is not ours
            self._lock = self._lock_out()  # before anything in out is read or written
        try:
            if out is not None:
                self._prepare_out(resume)
            if resume:
                self._resume()
            elif out is not None:
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

    # ------------------------------------------------------------------------------- setup
    def _optimizer_groups(self) -> list[dict[str, Any]]:
        """The objective's groups, each split into weight decay (matrices, embeddings) and none (biases,
        norms); frozen parameters are left out."""
        groups, seen = [], set()
        for group in self.objective.param_groups(self.module):
            params = [p for p in group.params if p.requires_grad and id(p) not in seen]
            seen |= {id(p) for p in params}
            for decayed in (True, False):
                chosen = [p for p in params if (p.dim() >= 2) == decayed]
                if chosen:
                    groups.append(
                        {
                            "params": chosen,
                            "weight_decay": self.config.weight_decay if decayed else 0.0,
                            "lr": self.config.lr * group.lr_scale,
                            "name": f"{group.name}{'' if decayed else ' (no decay)'}",
                        }
                    )
        if not groups:
            raise ValueError("nothing to train: every parameter is frozen")
        if self.world.main:
            logger.info(
                "optimizer groups: %s",
                ", ".join(f"{g['name']} {sum(p.numel() for p in g['params']):,} at lr {g['lr']:.3g}" for g in groups),
            )
        return groups

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
        # Every rank checked the folder before the lock (whose all-reduce waits for them all); only the writer checks
        # again here: another rank would race with its config.json and could read it half written.
        if self.world.main:
            check_run_folder(self.out, resume=resume)
            self.out.mkdir(parents=True, exist_ok=True)
            if not resume:
                (self.out / CONFIG_FILE).write_text(json.dumps(self.settings(), indent=2) + "\n")
        self.world.barrier()

    def settings(self) -> dict[str, Any]:
        """What a resumed run must share with the saved one."""
        settings = dict(self.objective.settings())
        return {"model": settings.pop("model", {}), "train": self.config.to_dict()} | settings

    def _resume(self) -> None:
        state = load_state(self.out)
        saved, current = dict(state["config"]), self.settings()
        # a setting added since the run was saved reads as its default, the value the run trained with
        saved["train"] = type(self.config)().to_dict() | saved.get("train", {})
        changed = sorted(
            f"{part}.{k}" for part in current for k in current[part] if saved.get(part, {}).get(k) != current[part][k]
        )
        if changed:
            raise ConfigError(f"cannot resume: the settings differ from the saved run's in {changed}")
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        _use_fused(self.optimizer, self.fused)
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step, self.best, self.bad_evals = state["step"], state["best"], state["bad_evals"]
        self.best_tiebreak, self.best_step = state.get("best_tiebreak", math.inf), state.get("best_step")
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
    def fit(self) -> TrainSummary:
        """Train until ``config.steps`` or early stopping; returns the run summary."""
        try:
            summary = self._fit()
        finally:
            self.close()
        if self.start_state is not None:
            self._compete_with_start(summary)
            if self.out is not None and self.world.main:  # with which weights were kept
                (self.out / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
        return summary

    def _compete_with_start(self, summary: TrainSummary) -> None:
        """Put the starting weights back unless an evaluated step beat them (strictly)."""
        best, start, monitor = summary.best, self.start_value, self.objective.monitor
        beat = best is not None and (best > start if self.objective.maximize else best < start)
        summary.start, summary.kept = start, "fine-tuned" if beat else "start"
        if not beat:
            self.module.load_state_dict(self.start_state)
            if self.world.main:
                logger.warning(
                    "fine-tuning did not improve %s on the starting weights' %.5g (best %s); the starting weights "
                    "are kept",
                    monitor,
                    start,
                    "none" if best is None else f"{best:.5g}",
                )

    def _fit(self) -> TrainSummary:
        config, world, out = self.config, self.world, self.out
        start_time = time.perf_counter()
        cells_seen = 0
        stopped_early = config.patience > 0 and self.bad_evals >= config.patience  # a resumed, stopped run
        if out is not None and (self.step >= config.steps or stopped_early) and (out / SUMMARY_FILE).exists():
            logger.info("the run in %s has already finished", out)
            if self.keep_best and self.best_state is not None:
                self.module.load_state_dict(self.best_state)
            return TrainSummary.from_dict(json.loads((out / SUMMARY_FILE).read_text()), self.objective.monitor)
        bar = tqdm(total=config.steps, initial=self.step, desc="training", unit="step", disable=not world.main or None)
        step_seconds = 0.0  # in optimizer steps only (not evaluation or checkpoints)
        while self.step < config.steps and not stopped_early:
            lr = config.lr * lr_factor(self.step, config)  # the run's rate at this step (groups scale it)
            tic = time.perf_counter()
            try:
                metrics = self._train_step()
            except FloatingPointError as err:
                if not self.keep_best:
                    raise
                self.stopped_by = str(err)  # fine-tuning: stop, keep the last good state
                logger.error("%s; training stopped, the last good weights are kept", err)
                break
            step_seconds += time.perf_counter() - tic
            cells_seen += metrics["cells"]
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3g}")
            record = {"step": self.step, "lr": lr} | metrics
            if self.step % config.eval_every == 0 or self.step == config.steps:
                record |= self._evaluate()
                stopped_early = self._track(record)
                if bar.disable and world.main:  # no bar (stderr is not a terminal): a log line per evaluation
                    self._log_progress(record)
            if out is not None and world.main:
                if self.step % config.log_every == 0 or self.objective.monitor in record or self.step == config.steps:
                    with open(out / METRICS_FILE, "a") as log:
                        log.write(json.dumps(record) + "\n")
            if out is not None and (
                self.step % config.checkpoint_every == 0 or self.step == config.steps or stopped_early
            ):
                self._checkpoint()
        bar.close()
        if self.keep_best and self.best_state is not None:
            self.module.load_state_dict(self.best_state)
        seconds = time.perf_counter() - start_time
        summary = TrainSummary(
            monitor=self.objective.monitor,
            steps=self.step,
            stopped_early=stopped_early,
            stopped_by=self.stopped_by,
            best=self._best_value() if self.history else None,
            best_step=self.best_step,
            history=self.history,
            seconds=round(seconds, 2),
            train_cells_per_s=round(cells_seen / step_seconds, 1) if step_seconds > 0 else None,
            processes=world.world_size,
            device=str(world.device),
            precision="bf16" if self.dtype else "fp32",
            threads=thread_settings(),
        )
        if out is not None and world.main:
            (out / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
        if world.main:
            logger.info("training done: %s", {k: v for k, v in summary.to_dict().items() if k != "val_history"})
        world.barrier()
        return summary

    def _log_progress(self, record: dict[str, float]) -> None:
        monitor = self.objective.monitor
        logger.info(
            "step %d/%d: loss %.4g, %s %.4g (best %.4g)",
            self.step,
            self.config.steps,
            record["loss"],
            monitor,
            record[monitor],
            self._best_value(),
        )

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.world.device.type, dtype=self.dtype)

    def _positions(self) -> list[int]:
        if self.config.sets_per_step % self.world.world_size:
            raise ValueError(
                f"sets_per_step={self.config.sets_per_step} is not a multiple of the world size {self.world.world_size}"
            )
        return list(range(self.world.rank, self.config.sets_per_step, self.world.world_size))

    def _train_step(self) -> dict[str, float]:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        items = self.objective.global_batch(self.step)
        positions = self.positions
        totals: dict[str, float] = {}  # each logged scalar summed over the items, and their cells
        for i, position in enumerate(positions):
            torch.manual_seed(set_seed(self.config.seed, self.step, position))
            last = i == len(positions) - 1
            sync = nullcontext() if last or self.world.world_size == 1 else self.model.no_sync()
            with sync:
                loss, n_cells = self.objective.loss(self.model, items[position], self.world.device, self.autocast)
                (loss.total / len(positions)).backward()
            if not torch.isfinite(loss.total):
                raise FloatingPointError(
                    f"non-finite loss at step {self.step + 1} (item {items[position]}); lower train.lr or use "
                    "precision fp32" + (", then resume from the last checkpoint" if self.out is not None else "")
                )
            values = loss.logged(self.objective.objective_name) | {"cells": n_cells}
            totals = {name: totals.get(name, 0.0) + value for name, value in values.items()}
        grad_norm = 0.0
        if self.config.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        names = list(totals)  # the same on every process: the objective's loss names them
        summed = dict(zip(names, self.world.sum([totals[name] for name in names])))
        n = self.config.sets_per_step
        metrics = {name: value / n for name, value in summed.items() if name != "cells"}
        metrics["cells"] = int(summed["cells"])
        return metrics | ({"grad_norm": grad_norm} if self.config.grad_clip > 0 else {})

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        self.module.eval()
        return self.objective.evaluate(self.module, self.world, self.autocast)

    def _best_value(self) -> float:
        return -self.best if self.objective.maximize else self.best

    def _track(self, record: dict[str, float]) -> bool:
        """Record an evaluation; keep the state when it improves; whether to stop (early, or diverged)."""
        monitor = self.objective.monitor
        value = record[monitor]
        self.history.append({"step": self.step} | {k: record[k] for k in record if k.startswith("val_")})
        diverged = not all(math.isfinite(v) for k, v in record.items() if k.startswith("val_"))
        score = -value if self.objective.maximize else value  # lower is better from here on
        tiebreak = record[self.objective.tiebreak] if self.objective.tiebreak else math.inf
        improved = score < self.best or (score == self.best and tiebreak < self.best_tiebreak)
        if not diverged and improved:
            self.best, self.best_tiebreak, self.best_step, self.bad_evals = score, tiebreak, self.step, 0
            if self.keep_best:
                self.best_state = copy.deepcopy(self.module.state_dict())
            if self.world.main:
                self.objective.on_improved(self.module, self.step, self.history, self.out)
        else:
            self.bad_evals += 1
        if self.world.main:
            self.objective.on_evaluated(self.module, self.step, self.history, self.out)
        if diverged and self.keep_best:  # fine-tuning: stop, keep the last good state
            self.stopped_by = f"non-finite validation metrics at step {self.step}"
            logger.error("%s; training stopped, the last good weights are kept", self.stopped_by)
            return True
        return self.config.patience > 0 and self.bad_evals >= self.config.patience

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
                    "best_tiebreak": self.best_tiebreak,
                    "best_step": self.best_step,
                    "bad_evals": self.bad_evals,
                    "history": self.history,
                    "config": self.settings(),
                },
            )
        self.world.barrier()


def _use_fused(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """After ``load_state_dict``, which brings back the saved groups' kernel choice: this run's choice (a run saved
    by an earlier version, unfused, or on another device), with each step count where the fused kernel reads it."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = (True, None) if fused else (None, group.get("foreach"))
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if fused and "step" in state:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
