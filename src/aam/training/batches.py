"""How the trainer draws batches: a resumable, rank-sharded epoch sampler and a collate wrapper that adds the
padded layout of the packed entries."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

from aam.data.batching import packed_layout


def epoch_order(n: int, shuffle: bool, seed: int, epoch: int) -> list[int]:
    """The sample order of an epoch: a permutation reproducible from (seed, epoch), or 0..n-1."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


class LayoutCollate:
    """Wraps a collate_fn: adds the padded layout of the packed entries (computed on the host, pinned and
    copied with the batch) so the forward pass has no device-to-host sync."""

    def __init__(self, collate_fn: Callable) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: list) -> dict[str, Any]:
        batch = self.collate_fn(items)
        batch["entry_sample"], batch["entry_pos"], batch["max_slots"] = packed_layout(batch["offsets"])
        return batch


class EpochSampler(Sampler[int]):
    """Shuffled (or ordered) indices, reproducible from (seed, epoch), sharded across ranks like
    DistributedSampler, and able to start mid-epoch (`skip` indices already consumed on this rank)."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.epoch = 0
        self.skip = 0

    def indices(self) -> list[int]:
        order = epoch_order(self.n, self.shuffle, self.seed, self.epoch)
        per_rank = math.ceil(self.n / self.world)
        order += order[: per_rank * self.world - self.n]  # pad like DistributedSampler
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip :])

    def __len__(self) -> int:
        return max(0, math.ceil(self.n / self.world) - self.skip)
