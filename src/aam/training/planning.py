"""How many samples a batch holds: a fixed `--batch-size`, batches packed under a token or memory budget
(`--max-tokens`, `--max-memory-gb`), or the largest fixed batch under the budget (`--auto-batch-size`).

`Footprint` gives the `BatchShape` of any group of samples without collating it (their ASV sets and read
lengths), so an epoch's batches are packed on the host in one pass. `BudgetBatchSampler` packs each epoch's
shuffled order (reproducible from (seed, epoch)) greedily: a batch takes samples while its shape fits the
budget, so every sample is in exactly one batch per epoch and the pairwise loss covers every pair of a batch.
`BatchPlan` is what was chosen; it is logged, written to batch_plan.json and saved in every checkpoint, so a
resumed run batches exactly as before.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from aam.errors import AAMError
from aam.training.batches import EpochSampler, epoch_order
from aam.training.config import TrainConfig
from aam.training.memory import GB, BatchShape, MemoryModel, PeakMeter

log = logging.getLogger("aam")

Fits = Callable[[BatchShape], bool]
PLAN_MODES = ("fixed", "budget")
AUTO_MEMORY_FRACTION = 0.9  # --auto-batch-size without --max-memory-gb: this share of the device's memory
MEMORY_HEADROOM = 0.9  # batches are planned to 90% of a memory budget: allocator slack and the model's error


@dataclass(frozen=True)
class BatchPlan:
    """The batching of a run: `fixed` batches of `batch_size` samples, or `budget` batches packed under
    `max_tokens` nucleotide tokens and/or `max_memory_bytes` (predicted by `memory_model`)."""

    mode: str
    batch_size: int
    accumulation: int
    max_tokens: int | None = None
    max_memory_bytes: int | None = None
    memory_model: dict[str, Any] | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.mode not in PLAN_MODES:
            raise ValueError(self.mode)

    def fits(self) -> Fits:
        """The budget test of a batch shape (every shape fits a fixed plan)."""
        model = MemoryModel.from_dict(self.memory_model) if self.memory_model else None

        def fits(shape: BatchShape) -> bool:
            if self.max_tokens is not None and shape.nucleotide_tokens > self.max_tokens:
                return False
            return (model is None or self.max_memory_bytes is None
                    or model.predict(shape) <= MEMORY_HEADROOM * self.max_memory_bytes)

        return fits

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchPlan:
        return cls(**data)

    def describe(self) -> str:
        limits = []
        if self.max_tokens is not None:
            limits.append(f"{self.max_tokens} nucleotide tokens")
        if self.max_memory_bytes is not None:
            limits.append(f"{self.max_memory_bytes / GB:.2f} GB")
        under = f" under {' and '.join(limits)}" if limits else ""
        size = f"{self.batch_size} samples" if self.mode == "fixed" else "as many samples as fit"
        return (f"batches: {size}{under}, {self.accumulation} micro-batch(es) per optimizer step"
                f"{f' ({self.reason})' if self.reason else ''}")


class Footprint:
    """The ASV sets of a SampleDataset's samples (after its selection for the current epoch): the shape of a
    batch of any samples, and greedy packing under a budget."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.lengths = np.asarray(dataset.token_lengths)
        self._seen = np.zeros(len(self.lengths), dtype=bool)

    def features(self, i: int) -> np.ndarray:
        return self.dataset.select(int(i))[0]

    def shape(self, samples: Sequence[int]) -> BatchShape:
        feats = [self.features(i) for i in samples]
        allf = np.concatenate(feats) if feats else np.zeros(0, dtype=np.int64)
        uniq = np.unique(allf)
        width = int(self.lengths[uniq].max()) if uniq.size else 0
        return BatchShape(len(samples), int(uniq.size), width, int(allf.size))

    def pack(self, order: Sequence[int], fits: Fits) -> list[list[int]]:
        """Consecutive samples of `order` in batches whose shapes fit; a sample that does not fit alone is an
        error naming it."""
        seen = self._seen
        batches: list[list[int]] = []
        current: list[int] = []
        held: list[np.ndarray] = []
        unique = width = entries = 0
        for i in order:
            feats = self.features(i)
            new = feats[~seen[feats]]
            grown = BatchShape(len(current) + 1, unique + new.size,
                               max(width, int(self.lengths[new].max()) if new.size else 0), entries + feats.size)
            if current and not fits(grown):
                batches.append(current)
                for arr in held:
                    seen[arr] = False
                current, held, unique, width, entries = [], [], 0, 0, 0
                new = np.unique(feats)
                grown = BatchShape(1, new.size, int(self.lengths[new].max()) if new.size else 0, feats.size)
            if not current and not fits(grown):
                sid = self.dataset.sample_ids[int(i)]
                raise AAMError(f"sample {sid} alone ({grown.unique_asvs} ASVs, {grown.nucleotide_tokens} nucleotide "
                               "tokens) does not fit the batch budget; raise --max-tokens / --max-memory-gb or lower "
                               "--token-limit")
            seen[new] = True
            held.append(new)
            current.append(int(i))
            unique, width, entries = grown.unique_asvs, grown.token_width, grown.entries
        if current:
            batches.append(current)
        for arr in held:
            seen[arr] = False
        return batches

    def largest_fixed_batch(self, order: Sequence[int], fits: Fits, most: int) -> int:
        """The largest batch size B <= most whose every batch of `order` (consecutive chunks of B) fits; 0 when
        not even one sample fits."""

        def ok(b: int) -> bool:
            return all(fits(self.shape(order[k:k + b])) for k in range(0, len(order), b))

        lo, hi = 0, max(1, min(most, len(order)))
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if ok(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo


class BudgetBatchSampler(Sampler[list[int]]):
    """Each epoch's order packed into budget batches (the same on every rank), dealt round-robin to the ranks
    (padded, like DistributedSampler, so every rank has as many); `skip` batches already consumed on this
    rank are left out (mid-epoch resume)."""

    def __init__(self, footprint: Footprint, fits: Fits, shuffle: bool, seed: int, rank: int = 0,
                 world: int = 1) -> None:
        self.footprint, self.fits, self.shuffle, self.seed = footprint, fits, shuffle, seed
        self.rank, self.world = rank, world
        self.epoch = 0
        self.skip = 0
        self._cache: tuple[tuple[int, int], list[list[int]]] | None = None

    def all_batches(self) -> list[list[int]]:
        """Every batch of the epoch, over all ranks."""
        key = (self.epoch, int(getattr(self.footprint.dataset, "epoch", 0)))
        if self._cache is None or self._cache[0] != key:
            order = epoch_order(len(self.footprint.dataset), self.shuffle, self.seed, self.epoch)
            self._cache = (key, self.footprint.pack(order, self.fits))
        return self._cache[1]

    def rank_batches(self) -> list[list[int]]:
        batches = self.all_batches()
        per_rank = math.ceil(len(batches) / self.world)
        padded = batches + batches[: per_rank * self.world - len(batches)]
        return padded[self.rank :: self.world]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.rank_batches()[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.rank_batches()) - self.skip)


def accumulation_for(target: int | None, mean_batch: float, world: int, given: int) -> int:
    """Micro-batches per optimizer step that reach `target` samples per step (over all ranks)."""
    if target is None:
        return given
    return max(1, math.ceil(target / max(mean_batch * world, 1e-9)))


def plan_batches(cfg: TrainConfig, dataset: Any, world: int, pairwise: bool, device: torch.device,
                 fit_memory_model: Callable[[PeakMeter, int | None], MemoryModel]) -> BatchPlan:
    """The batching `cfg` asks for. Memory budgets are checked against a memory model that
    `fit_memory_model(meter, budget)` fits to probe steps on the device; `pairwise` runs need 2 samples."""
    if not cfg.budgeted:
        accum = accumulation_for(cfg.target_effective_batch_size, cfg.batch_size, world, cfg.gradient_accumulation_steps)
        return BatchPlan("fixed", cfg.batch_size, accum, reason="--batch-size")
    memory_bytes = int(cfg.max_memory_gb * GB) if cfg.max_memory_gb is not None else None
    model = None
    if memory_bytes is not None or cfg.auto_batch_size:
        meter = PeakMeter(device)
        if memory_bytes is None:
            memory_bytes = int(AUTO_MEMORY_FRACTION * meter.capacity())
            log.info("--auto-batch-size: budget %.2f GB (%.0f%% of the %s's memory; --max-memory-gb sets it)",
                     memory_bytes / GB, 100 * AUTO_MEMORY_FRACTION, device.type.upper())
        model = fit_memory_model(meter, int(MEMORY_HEADROOM * memory_bytes))
        log.info("%s", model.describe())
    memory = model.to_dict() if model else None
    fits = BatchPlan("budget", 0, 1, cfg.max_tokens, memory_bytes, memory).fits()
    footprint = Footprint(dataset)
    order = epoch_order(len(dataset), True, cfg.seed, 0)
    if cfg.auto_batch_size:
        size = footprint.largest_fixed_batch(order, fits, math.ceil(len(order) / world))
        if size < (2 if pairwise else 1):
            raise AAMError(f"--auto-batch-size: {'no batch of 2 samples' if size else 'no single sample'} fits the "
                           "budget; raise --max-memory-gb / --max-tokens or lower --token-limit")
        accum = accumulation_for(cfg.target_effective_batch_size, size, world, cfg.gradient_accumulation_steps)
        return BatchPlan("fixed", size, accum, cfg.max_tokens, memory_bytes, memory,
                         reason="--auto-batch-size: the largest batch whose every batch of epoch 1 fits")
    batches = footprint.pack(order, fits)
    mean = len(order) / len(batches)
    accum = accumulation_for(cfg.target_effective_batch_size, mean, world, cfg.gradient_accumulation_steps)
    return BatchPlan("budget", 0, accum, cfg.max_tokens, memory_bytes, memory,
                     reason=f"{len(batches)} batches of {mean:.1f} samples on average in epoch 1")


class Batching:
    """The loaders of a run under its BatchPlan: the training loader (shuffled, sharded over the ranks, able to
    start mid-epoch) and ordered loaders for evaluation."""

    def __init__(self, plan: BatchPlan, train_set: Dataset, collate_fn: Callable, seed: int, rank: int, world: int,
                 num_workers: int, pin_memory: bool) -> None:
        self.plan, self.collate_fn, self.seed, self.rank, self.world = plan, collate_fn, seed, rank, world
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.train_set = train_set
        self.train_sampler = self._sampler(train_set, shuffle=True)
        self.train_loader = self._loader(train_set, self.train_sampler)

    def _sampler(self, dataset: Dataset, shuffle: bool) -> EpochSampler | BudgetBatchSampler:
        rank, world, seed = (self.rank, self.world, self.seed) if shuffle else (0, 1, 0)
        if self.plan.mode == "budget":
            return BudgetBatchSampler(Footprint(dataset), self.plan.fits(), shuffle, seed, rank, world)
        return EpochSampler(len(dataset), shuffle, seed, rank, world)

    def _loader(self, dataset: Dataset, sampler: EpochSampler | BudgetBatchSampler) -> DataLoader:
        common = dict(collate_fn=self.collate_fn, num_workers=self.num_workers, pin_memory=self.pin_memory,
                      persistent_workers=False, generator=torch.Generator().manual_seed(self.seed),
                      prefetch_factor=2 if self.num_workers > 0 else None)
        if isinstance(sampler, BudgetBatchSampler):
            return DataLoader(dataset, batch_sampler=sampler, **common)
        return DataLoader(dataset, batch_size=self.plan.batch_size, sampler=sampler, drop_last=False, **common)

    def ordered_loader(self, dataset: Dataset) -> DataLoader:
        """All of `dataset` in order, batched like training (validation and evaluation)."""
        return self._loader(dataset, self._sampler(dataset, shuffle=False))

    def batches_in_epoch(self, epoch: int) -> int:
        """Training batches of `epoch` on this rank (budget batches differ from epoch to epoch)."""
        sampler = self.train_sampler
        sampler.epoch = epoch
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)  # reseeds 'random' ASV selection (and so the budget batches' shapes)
        if isinstance(sampler, BudgetBatchSampler):
            return len(sampler.rank_batches())
        return math.ceil(math.ceil(sampler.n / self.world) / self.plan.batch_size)

    def start_epoch_at(self, batch: int) -> None:
        """Leave out the first `batch` training batches of the epoch on this rank (mid-epoch resume)."""
        fixed = isinstance(self.train_sampler, EpochSampler)
        self.train_sampler.skip = batch * self.plan.batch_size if fixed else batch
