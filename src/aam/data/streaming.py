"""Pretraining on a BIOM HDF5 table read a sample at a time, for tables larger than memory (`aam pretrain --stream`).

`StreamedTable` holds what the whole table costs little to keep: sample and feature IDs, per-sample read totals,
the file's sample-major CSR row pointers and the token rows of the features. `StreamingDataset` reads a sample's
counts from the file when a batch asks for it (three h5py slices), rarefies them and picks its ASVs like
`SampleDataset`; its items are the same. It is a map-style dataset, so the training sampler shards it over the
DDP ranks and the DataLoader over its workers: each process reads only the samples of its own batches, through
its own file handle (opened lazily, again after a fork).

Rarefaction draws each sample on its own, seeded by (rarefaction seed, the sample's row in the file), so a
sample's counts are the same in every worker, rank, epoch and resume; they differ from a whole-table run's
draw (biom's `subsample` with one seed), which is the same distribution.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import biom
import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from aam.data import biom_io, sequences, tokenizer
from aam.data.dataset import SELECTION_MODES
from aam.data.prepare import DEFAULT_MAX_DEPTH, DEPTH_PERCENTILE, Preprocessing, default_rarefy_depth
from aam.errors import AAMError, InputError

log = logging.getLogger("aam")
CHUNK = 4096  # samples per read while scanning the whole file (totals, UniFrac state)


def _bar(total: int, desc: str) -> tqdm:
    """A progress bar over samples for the whole-file passes (AAM_NO_PROGRESS hides it)."""
    return tqdm(total=total, desc=desc, unit="sample", leave=False,
                disable=os.environ.get("AAM_NO_PROGRESS") is not None)


class _Rows:
    """Sample-major CSR reads of one HDF5 BIOM file; the h5py handle is per process (reopened after a fork)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: h5py.File | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def _open(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def read(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr [hi - lo + 1] from 0, feature indices, counts) of file samples lo:hi."""
        f = self._open()
        indptr = f["sample/matrix/indptr"][lo : hi + 1].astype(np.int64)
        start, end = int(indptr[0]), int(indptr[-1])
        indices = f["sample/matrix/indices"][start:end].astype(np.int64)
        counts = f["sample/matrix/data"][start:end].astype(np.float64)
        return indptr - start, indices, counts


@dataclass
class StreamedTable:
    """The parts of an HDF5 BIOM table kept in memory for streaming; counts stay in the file."""

    path: str
    sample_ids: list[str]  # the samples kept (not dropped by rarefaction), file order
    rows: np.ndarray  # [n kept] their row in the file
    totals: np.ndarray  # [n kept] reads per kept sample
    feature_ids: list[str]
    sequences: list[str]  # per feature, file order
    tokens: np.ndarray  # [n_features, max_bp + 1] uint8
    nnz: np.ndarray  # [n kept] ASVs per kept sample before rarefaction
    depth: int  # 0 = not rarefied
    rarefy_seed: int
    dropped: dict[str, str]

    def positions(self, sample_ids: list[str]) -> np.ndarray:
        """Position of each of `sample_ids` among the kept samples."""
        index = {s: i for i, s in enumerate(self.sample_ids)}
        return np.fromiter((index[s] for s in sample_ids), dtype=np.int64, count=len(sample_ids))

    def counts(self, reader: _Rows, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(feature indices, counts) of file row `row`, rarefied when the table is."""
        indptr, indices, counts = reader.read(row, row + 1)
        return rarefy_sample(indices, counts, self.depth, self.rarefy_seed, row)

    def chunks(self, reader: _Rows) -> Iterator[tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]]:
        """(kept positions, [(features, counts)] per kept sample), CHUNK file rows at a time, in file order."""
        order = np.argsort(self.rows, kind="stable")
        for k in range(0, len(order), CHUNK):
            pos = order[k : k + CHUNK]
            rows = self.rows[pos]
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            indptr, indices, counts = reader.read(lo, hi)
            out = []
            for r in rows:
                a, b = int(indptr[r - lo]), int(indptr[r - lo + 1])
                out.append(rarefy_sample(indices[a:b], counts[a:b], self.depth, self.rarefy_seed, int(r)))
            yield pos, out


def rarefy_sample(features: np.ndarray, counts: np.ndarray, depth: int, seed: int, row: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """`depth` reads drawn without replacement from one sample, seeded by (seed, row); depth 0 keeps the counts.
    Features left without reads are removed."""
    if features.size > 1 and (np.diff(features) < 0).any():  # table order (biom writes rows sorted)
        order = np.argsort(features, kind="stable")
        features, counts = features[order], counts[order]
    if depth <= 0:
        keep = counts > 0
        return features[keep], counts[keep]
    rng = np.random.default_rng((seed, row))
    drawn = rng.multivariate_hypergeometric(np.round(counts).astype(np.int64), depth).astype(np.float64)
    keep = drawn > 0
    return features[keep], drawn[keep]


def check_hdf5(path: str | Path) -> None:
    """InputError unless `path` is an HDF5 file (what --stream reads)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"table file {path} does not exist; check the --table path")
    with open(path, "rb") as fh:
        if fh.read(8) != biom_io.HDF5_MAGIC:
            raise InputError(f"--stream reads BIOM HDF5 tables; {path} is not one (convert it with `biom convert "
                             "--to-hdf5`, or drop --stream to load it into memory)")


def open_streamed(table_path: str | Path, sequences_path: str | Path | None, depth: int | None, seed: int,
                  max_bp: int) -> StreamedTable:
    """Scan an HDF5 BIOM table chunk by chunk (totals, count checks), pick the rarefaction depth like
    `prepare_table` (None = min(5000, 10th percentile)), drop samples under it, tokenize the features."""
    path = Path(table_path)
    check_hdf5(path)
    with h5py.File(path, "r") as f:
        sample_ids = biom_io._decoded(f["sample/ids"][:])
        feature_ids = biom_io._decoded(f["observation/ids"][:])
    reader = _Rows(str(path))
    totals = np.zeros(len(sample_ids))
    nnz = np.zeros(len(sample_ids), dtype=np.int64)
    bar = _bar(len(sample_ids), f"reading {path.name}")
    for lo in range(0, len(sample_ids), CHUNK):
        hi = min(lo + CHUNK, len(sample_ids))
        indptr, indices, counts = reader.read(lo, hi)
        bar.update(hi - lo)
        bad = ~np.isfinite(counts) | (counts < 0)
        if depth != 0 and not bad.any():
            bad = counts != np.round(counts)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            s = lo + int(np.searchsorted(indptr, k, side="right")) - 1
            raise InputError(f"{path}: invalid count {counts[k]:g} in sample {sample_ids[s]!r}, feature "
                             f"{feature_ids[int(indices[k])][:40]!r}; give integer read counts >= 0 (or "
                             "--rarefy-depth 0 for other values)")
        sums = np.add.reduceat(counts, indptr[:-1]) if counts.size else np.zeros(hi - lo)
        totals[lo:hi] = np.where(np.diff(indptr) > 0, sums, 0.0)
        nnz[lo:hi] = np.diff(indptr)
    bar.close()
    mapping = sequences.load_sequences(sequences_path) if sequences_path else None
    seqs = sequences.feature_sequences(feature_ids, mapping, path, sequences_path)
    dropped = {s: "no reads" for s, t in zip(sample_ids, totals, strict=True) if t <= 0}
    if depth is None:
        depth = default_rarefy_depth(totals[totals > 0])
        log.info("rarefaction depth %d = min(%d, %dth percentile of sample depths); set --rarefy-depth to change",
                 depth, DEFAULT_MAX_DEPTH, DEPTH_PERCENTILE)
    if depth > 0:
        reads = totals > 0  # empty samples are dropped above
        under = biom_io.under_depth([s for s, r in zip(sample_ids, reads, strict=True) if r], totals[reads], depth,
                                    f"table {path}")
        dropped.update({s: f"fewer than {depth} reads (rarefaction depth)" for s in under})
    elif dropped:
        raise InputError(f"{len(dropped)} sample(s) of {path} have no reads: {', '.join(list(dropped)[:10])}; "
                         "remove them from the table")
    keep = np.flatnonzero([s not in dropped for s in sample_ids])
    tokens, _, report = tokenizer.tokenize(seqs, max_bp, ids=feature_ids)
    report.log()
    log.info("streaming %s: %d samples, %d features, counts read from the file per batch", path, len(keep),
             len(feature_ids))
    return StreamedTable(str(path), [sample_ids[i] for i in keep], keep.astype(np.int64), totals[keep], feature_ids,
                         seqs, tokens, nnz[keep], int(depth), int(seed), dropped)


class StreamingDataset(torch.utils.data.Dataset):
    """`SampleDataset`'s items for `sample_ids` of a StreamedTable (in the file's order, like `make_dataset`),
    each read from the file when asked for."""

    def __init__(self, table: StreamedTable, sample_ids: list[str], pre: Preprocessing) -> None:
        if pre.asv_sampling not in SELECTION_MODES:
            raise AAMError(f"asv_sampling must be one of {', '.join(SELECTION_MODES)} (got {pre.asv_sampling!r})")
        pos = np.sort(table.positions(sample_ids))  # kept samples are in file order
        self.table = table
        self.sample_ids = [table.sample_ids[i] for i in pos]
        self.rows = table.rows[pos]
        self.feature_ids = table.feature_ids
        self.token_table = table.tokens
        self.token_lengths = tokenizer.token_lengths(table.tokens)
        self.token_limit = int(pre.token_limit)
        self.asv_selection = pre.asv_sampling
        self.seed = int(pre.seed)
        self.epoch = 0
        self._reader = _Rows(table.path)
        self._nnz = table.nnz[pos]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def set_epoch(self, epoch: int) -> None:
        """Reseeds 'random' ASV selection, as SampleDataset.set_epoch."""
        self.epoch = int(epoch)

    def n_asvs(self) -> np.ndarray:
        """ASVs per sample before rarefaction and the token limit."""
        return self._nnz

    def select(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(feature indices, counts) of sample i after rarefaction and selection, by decreasing abundance."""
        features, counts = self.table.counts(self._reader, int(self.rows[i]))
        return select_asvs(features, counts, self.token_limit, self.asv_selection, (self.seed, self.epoch, i))

    def __getitem__(self, i: int) -> dict[str, Any]:
        features, counts = self.select(int(i))
        return {"sample_id": self.sample_ids[i], "features": features, "counts": counts.astype(np.float32),
                "tokens": self.token_table[features], "lengths": self.token_lengths[features]}


def select_asvs(features: np.ndarray, counts: np.ndarray, k: int, mode: str, seed: tuple[int, ...]
                ) -> tuple[np.ndarray, np.ndarray]:
    """At most k of one sample's ASVs (features in table order): the k most abundant, the first k in table
    order, or k at random (seeded); returned by decreasing count, ties in table order (SampleDataset.select)."""
    order = np.lexsort((features, -counts))
    if len(features) > k and mode != "abundance":
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        picked = np.arange(k) if mode == "first" else np.random.default_rng(seed).choice(len(features), k, replace=False)
        order = order[np.sort(rank[picked])]
    else:
        order = order[:k]
    return features[order], counts[order]


def visible_chunks(table: StreamedTable, pre: Preprocessing, visible: bool) -> Iterator[biom.Table]:
    """The kept samples as biom Tables of CHUNK samples over every feature (the token limit applied when
    `visible`), for building UniFrac targets without the whole table in memory."""
    import scipy.sparse as sp

    reader = _Rows(table.path)
    bar = _bar(len(table.sample_ids), "UniFrac state")
    for pos, samples in table.chunks(reader):
        bar.update(len(pos))
        if visible:
            samples = [select_asvs(f, c, pre.token_limit, pre.asv_sampling, ()) for f, c in samples]
        cols = np.repeat(np.arange(len(samples)), [len(f) for f, _ in samples])
        rows = np.concatenate([f for f, _ in samples])
        data = np.concatenate([c for _, c in samples])
        m = sp.csc_matrix((data, (rows, cols)), shape=(len(table.feature_ids), len(samples)))
        yield biom.Table(m, table.feature_ids, [table.sample_ids[int(p)] for p in pos])
    bar.close()
