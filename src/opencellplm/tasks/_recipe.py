"""What every fine-tuning recipe hands the shared trainer."""

from __future__ import annotations

from typing import Any

from ..config import TrainConfig


def fine_tuning_config(recipe: Any) -> TrainConfig:
    """The :class:`~opencellplm.config.TrainConfig` of a task recipe (steps, lr, warm-up, decay, clipping,
    evaluation, early stopping, precision, seed; cosine decay to 0.1x the peak rate)."""
    return TrainConfig(
        steps=recipe.steps,
        sets_per_step=recipe.sets_per_step,
        lr=recipe.lr,
        min_lr_ratio=0.1,
        warmup_steps=min(recipe.warmup_steps, recipe.steps - 1),
        weight_decay=recipe.weight_decay,
        grad_clip=recipe.grad_clip,
        eval_every=recipe.eval_every,
        patience=recipe.patience,
        precision=recipe.precision,
        seed=recipe.seed,
    )
