"""Schedules and seeds as pure functions of (step, seed): nothing is counted inside a module."""

from __future__ import annotations

import math

import numpy as np

from ..config import TrainConfig


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``steps``.
    """
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_seed(seed: int, step: int, position: int) -> int:
    """Seed of the random draws (cell drop, masks, dropout, latent sample) for the set at ``position``
    of global batch ``step``: the same in every process layout, so runs are reproducible and resumable."""
    return int(np.random.SeedSequence([seed, step, position]).generate_state(1, dtype=np.uint64)[0] >> 1)
