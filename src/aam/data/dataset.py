"""Per-sample items and the packed batch (see docs/DEVELOPING.md, "The batch contract").

`SampleDataset[i]` returns the ASVs of sample i (at most token_limit, chosen by abundance, at random or
in table order) ordered by decreasing abundance (ties: table order), with their counts and token rows.
`collate(items, distances)` packs a batch: the unique ASVs of the batch are stored once in `tokens`
[U, Lb] (Lb = longest ASV in the batch + 1), entries point at them through `asv_index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Protocol

import biom
import numpy as np
import scipy.sparse as sp
import torch

from aam.data.tokenizer import token_lengths
from aam.errors import AAMError, InputError

SELECTION_MODES = ("abundance", "random", "first")


class DistanceSource(Protocol):
    ids: list[str]

    def pairs(self, sample_ids: Sequence[str]) -> np.ndarray: ...


class SampleDataset(torch.utils.data.Dataset):
    """Samples of a BIOM table as (features, counts, token rows) items.

    table: biom.Table (features x samples), usually rarefied.
    token_table: np.ndarray [n_features, L] of tokens, row f = feature f of `table` (tokenizer.tokenize).
    token_limit: most ASVs kept per sample.
    asv_selection: 'abundance' (default; most abundant, ties by table order), 'random' (seeded by
        (seed, epoch, sample index); call set_epoch each epoch) or 'first' (table order).
    targets: optional [n_samples] float (regression, already transformed; [n_samples, T] for T outputs) or
        integer (class index) array.
    categorical: optional [n_samples, C] integer codes (0 = unknown).
    asv_ids: optional [n_features] identity index of each feature (0 = none); batches then carry `asv_ids`.
    """

    def __init__(
        self,
        table: biom.Table,
        token_table: np.ndarray,
        token_limit: int,
        asv_selection: str = "abundance",
        seed: int = 0,
        targets: np.ndarray | None = None,
        categorical: np.ndarray | None = None,
        asv_ids: np.ndarray | None = None,
    ) -> None:
        if asv_selection not in SELECTION_MODES:
            raise AAMError(f"asv_selection must be one of {', '.join(SELECTION_MODES)} (got {asv_selection!r})")
        if token_limit < 1:
            raise AAMError(f"token_limit must be at least 1 (got {token_limit})")
        n_features, n_samples = table.shape
        if token_table.shape[0] != n_features:
            raise AAMError(
                f"token_table has {token_table.shape[0]} rows but the table has {n_features} features; "
                "tokenize the table's feature sequences in table order"
            )
        self.sample_ids: list[str] = [str(s) for s in table.ids(axis="sample")]
        self.feature_ids: list[str] = [str(f) for f in table.ids(axis="observation")]
        self.token_table = np.ascontiguousarray(token_table)
        self.token_lengths = token_lengths(self.token_table)
        self.token_limit = int(token_limit)
        self.asv_selection = asv_selection
        self.seed = int(seed)
        self.epoch = 0

        m = sp.csc_matrix(table.matrix_data)
        m.sum_duplicates()
        m.eliminate_zeros()
        m.sort_indices()
        self._indptr = m.indptr.astype(np.int64)
        indices = m.indices.astype(np.int64)
        counts = m.data.astype(np.float32)
        nnz = np.diff(self._indptr)
        if (nnz == 0).any():
            empty = [self.sample_ids[i] for i in np.flatnonzero(nnz == 0)[:10]]
            raise InputError(
                f"{int((nnz == 0).sum())} sample(s) have no reads: {', '.join(empty)}; "
                "remove empty samples (rarefaction drops them)"
            )
        # Abundance order within each sample, computed once: decreasing count, ties by feature index.
        sample_of = np.repeat(np.arange(n_samples, dtype=np.int64), nnz)
        order = np.lexsort((indices, -counts, sample_of))
        self._rank_indices = indices[order]
        self._rank_counts = counts[order]
        # For 'first' and 'random': position of each table-order entry in the abundance order.
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        self._rank_of_entry = rank

        self.targets = None if targets is None else np.asarray(targets)
        if self.targets is not None:
            if self.targets.shape[0] != n_samples:
                raise AAMError(f"targets has {self.targets.shape[0]} values for {n_samples} samples")
            # several target columns may miss some values (NaN, left out of the loss), but not all of a sample's
            finite = np.isfinite(self.targets.reshape(n_samples, -1)).any(1) if self.targets.dtype.kind == "f" else None
            if finite is not None and not finite.all():
                bad = [self.sample_ids[i] for i in np.flatnonzero(~finite)[:10]]
                raise InputError(f"targets are missing for samples {', '.join(bad)}; exclude them before training")
        self.categorical = None if categorical is None else np.asarray(categorical, dtype=np.int64)
        if self.categorical is not None and self.categorical.shape[0] != n_samples:
            raise AAMError(f"categorical has {self.categorical.shape[0]} rows for {n_samples} samples")
        self.asv_ids = None if asv_ids is None else np.asarray(asv_ids, dtype=np.int64)
        if self.asv_ids is not None and self.asv_ids.shape != (n_features,):
            raise AAMError(f"asv_ids has shape {self.asv_ids.shape} for {n_features} features")

    def __len__(self) -> int:
        return len(self.sample_ids)

    def set_epoch(self, epoch: int) -> None:
        """Reseeds 'random' ASV selection (call once per epoch, like DistributedSampler.set_epoch).

        DataLoader workers hold a copy of the dataset: with persistent_workers=True the new epoch does
        not reach them, so use non-persistent workers with 'random' selection.
        """
        self.epoch = int(epoch)

    def n_asvs(self) -> np.ndarray:
        """Number of ASVs per sample before the token limit."""
        return np.diff(self._indptr)

    def select(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(feature indices, counts) of sample i after selection, by decreasing abundance."""
        lo, hi = int(self._indptr[i]), int(self._indptr[i + 1])
        n = hi - lo
        k = self.token_limit
        if n <= k or self.asv_selection == "abundance":
            sl = slice(lo, lo + min(n, k))
            return self._rank_indices[sl], self._rank_counts[sl]
        if self.asv_selection == "first":
            ranks = self._rank_of_entry[lo : lo + k]
        else:  # random
            rng = np.random.default_rng((self.seed, self.epoch, i))
            ranks = self._rank_of_entry[lo + rng.choice(n, size=k, replace=False)]
        ranks = np.sort(ranks)
        return self._rank_indices[ranks], self._rank_counts[ranks]

    def visible_table(self) -> biom.Table:
        """The table as the model sees it: each sample keeps only its selected ASVs (the token limit applied).

        Only for deterministic selection ('abundance', 'first'); 'random' picks a new subset every epoch.
        """
        if self.asv_selection == "random":
            raise AAMError("the visible table needs a deterministic ASV selection ('abundance' or 'first'), "
                           "not 'random', which changes every epoch")
        picked = [self.select(i) for i in range(len(self))]
        rows = np.concatenate([f for f, _ in picked])
        cols = np.repeat(np.arange(len(picked), dtype=np.int64), [len(f) for f, _ in picked])
        data = np.concatenate([c for _, c in picked]).astype(np.float64)
        m = sp.csr_matrix((data, (rows, cols)), shape=(len(self.feature_ids), len(self)))
        return biom.Table(m, self.feature_ids, self.sample_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        features, counts = self.select(int(i))
        item: dict[str, Any] = {
            "sample_id": self.sample_ids[i],
            "features": features,
            "counts": counts,
            "tokens": self.token_table[features],
            "lengths": self.token_lengths[features],
        }
        if self.targets is not None:
            item["y"] = self.targets[i]
        if self.categorical is not None:
            item["categorical"] = self.categorical[i]
        if self.asv_ids is not None:
            item["asv_ids"] = self.asv_ids[features]
        return item

    def collate_fn(self, distances: DistanceSource | None = None) -> partial:
        """A DataLoader collate_fn bound to a distance source."""
        return partial(collate, distances=distances)


def collate(items: Sequence[dict[str, Any]], distances: DistanceSource | None = None) -> dict[str, Any]:
    """Pack SampleDataset items into the batch dict of the batch contract (docs/DEVELOPING.md)."""
    if not items:
        raise AAMError("collate got an empty batch")
    sizes = np.fromiter((len(it["features"]) for it in items), dtype=np.int64, count=len(items))
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    features = np.concatenate([it["features"] for it in items])
    uniq, first, inverse = np.unique(features, return_index=True, return_inverse=True)
    all_tokens = np.concatenate([it["tokens"] for it in items])
    lengths = np.concatenate([it["lengths"] for it in items])
    lb = int(lengths.max())
    tokens = all_tokens[first, :lb]
    batch: dict[str, Any] = {
        "tokens": torch.from_numpy(tokens.astype(np.int64)),
        "asv_index": torch.from_numpy(inverse.astype(np.int64).reshape(-1)),
        "offsets": torch.from_numpy(offsets),
        "counts": torch.from_numpy(np.concatenate([it["counts"] for it in items]).astype(np.float32)),
        "sample_ids": [it["sample_id"] for it in items],
        "asv_rows": torch.from_numpy(uniq.astype(np.int64)),
    }
    if "asv_ids" in items[0]:
        batch["asv_ids"] = torch.from_numpy(np.concatenate([it["asv_ids"] for it in items])[first])
    if distances is not None:
        batch["unifrac_target"] = torch.from_numpy(
            np.ascontiguousarray(distances.pairs(batch["sample_ids"]), dtype=np.float32)
        )
    if "y" in items[0]:
        y = np.asarray([it["y"] for it in items])
        if y.dtype.kind in "iub":
            batch["y"] = torch.from_numpy(y.astype(np.int64))
        else:
            batch["y"] = torch.from_numpy(y.astype(np.float32))
    if "categorical" in items[0]:
        batch["categorical"] = torch.from_numpy(np.stack([it["categorical"] for it in items]).astype(np.int64))
    return batch
