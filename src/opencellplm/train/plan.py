"""Which cell sets each optimizer step uses: a pure function of the corpus layout, seed and step."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

SetRef = tuple[int, int]  # (shard index, set index in the shard)


@dataclass(frozen=True)
class DataPlan:
    """The validation sets and the training order of a corpus.

    Validation takes a seeded ``val_fraction`` of the sets (at least one). Each epoch visits every
    training set once: shards in a seeded order, sets shuffled within windows of ``window`` shards
    (so a step reads few shards). Global batch ``step`` holds ``sets_per_step`` consecutive sets of
    that order; process ``rank`` of ``world_size`` takes positions ``rank::world_size`` of it.
    """

    shard_sizes: tuple[int, ...]
    sets_per_step: int
    val_fraction: float
    window: int
    seed: int

    def __post_init__(self) -> None:
        if sum(self.shard_sizes) < 2:
            raise ValueError("the corpus needs at least 2 cell sets (one for validation, one for training)")

    @property
    def all_sets(self) -> list[SetRef]:
        return [(s, k) for s, n in enumerate(self.shard_sizes) for k in range(n)]

    @cached_property
    def validation(self) -> list[SetRef]:
        sets = self.all_sets
        n_val = min(max(1, round(self.val_fraction * len(sets))), len(sets) - 1)
        chosen = np.random.default_rng([self.seed, 1]).choice(len(sets), n_val, replace=False)
        return [sets[i] for i in sorted(chosen)]

    @lru_cache(maxsize=2)  # noqa: B019 (plans are few and long-lived)
    def epoch_order(self, epoch: int) -> list[SetRef]:
        held_out = set(self.validation)
        rng = np.random.default_rng([self.seed, 2, epoch])
        shards = rng.permutation(len(self.shard_sizes))
        order: list[SetRef] = []
        for w in range(0, len(shards), self.window):
            window = [(int(s), k) for s in shards[w : w + self.window] for k in range(self.shard_sizes[s])]
            window = [ref for ref in window if ref not in held_out]
            order += [window[i] for i in rng.permutation(len(window))]
        return order

    @property
    def steps_per_epoch(self) -> int:
        n_train = sum(self.shard_sizes) - len(self.validation)
        return max(n_train // self.sets_per_step, 1)

    def global_batch(self, step: int) -> list[SetRef]:
        """The sets of optimizer step ``step`` (an epoch's leftover sets are skipped)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        if len(order) < self.sets_per_step:  # a tiny corpus: repeat the order to fill the batch
            order = (order * (self.sets_per_step // len(order) + 1))[: self.sets_per_step]
        return order[within * self.sets_per_step : (within + 1) * self.sets_per_step]

    def local_positions(self, rank: int, world_size: int) -> list[int]:
        """Positions of the global batch this process computes."""
        if self.sets_per_step % world_size:
            raise ValueError(f"sets_per_step={self.sets_per_step} is not a multiple of the world size {world_size}")
        return list(range(rank, self.sets_per_step, world_size))


def shuffled_batch(items: list, step: int, per_step: int, seed: int, stream: int) -> list:
    """The items of optimizer step ``step`` when every epoch visits ``items`` in a seeded order
    (``stream`` keeps tasks' orders apart); a list shorter than a step is repeated to fill it."""
    per_epoch = max(len(items) // per_step, 1)
    epoch, within = divmod(step, per_epoch)
    order = [items[i] for i in np.random.default_rng([seed, stream, epoch]).permutation(len(items))]
    if len(order) < per_step:
        order = order * (per_step // len(order) + 1)
    return order[within * per_step : (within + 1) * per_step]
