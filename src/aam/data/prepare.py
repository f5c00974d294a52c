"""From files to datasets, the same way in pretrain, train and predict (preprocessing is recorded).

Everything here composes aam.data; `Preprocessing` is what checkpoints store so predict repeats it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import biom
import numpy as np

from aam.data import biom_io, sequences, tokenizer
from aam.errors import InputError

if TYPE_CHECKING:
    from aam.data.dataset import SampleDataset

log = logging.getLogger("aam")
DEFAULT_MAX_DEPTH = 5000
DEPTH_PERCENTILE = 10


@dataclass
class Preprocessing:
    """How a table becomes model input; stored in every checkpoint."""

    rarefy_depth: int = 0  # 0 = not rarefied
    rarefy_seed: int = 42
    max_bp: int = 150
    token_limit: int = 1024
    asv_sampling: str = "abundance"
    seed: int = 42
    kernels: str = "auto"
    task: str = "pretrain"
    target_column: str | None = None
    target_transform: dict[str, Any] | None = None
    label_encoder: dict[str, Any] | None = None
    category_encoder: dict[str, Any] | None = None
    # Sequences of the ASVs the model has an identity embedding for (row k + 1; 0 = unknown), or None.
    asv_vocabulary: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def default_rarefy_depth(totals: np.ndarray) -> int:
    """min(5000, 10th percentile of sample depths): keeps ~90% of samples on shallow tables."""
    return max(1, int(min(DEFAULT_MAX_DEPTH, np.percentile(totals, DEPTH_PERCENTILE))))


@dataclass
class PreparedTable:
    table: biom.Table
    tokens: np.ndarray  # [n_features, max_bp + 1] uint8, rows in table order
    dropped: dict[str, str] = field(default_factory=dict)  # sample ID -> reason
    depth: int = 0
    sequences: list[str] = field(default_factory=list)  # the feature's sequence, rows in table order


def _sequences_for(table: biom.Table, table_path: str | Path, sequences_path: str | Path | None,
                   drop_unknown: bool) -> tuple[biom.Table, list[str], list[str]]:
    """(table restricted to features with a known sequence, their sequences, dropped feature IDs)."""
    ids = [str(f) for f in table.ids(axis="observation")]
    mapping = sequences.load_sequences(sequences_path) if sequences_path else None
    if not drop_unknown:
        return table, sequences.feature_sequences(ids, mapping, table_path, sequences_path), []
    if mapping is None:
        known = [f for f in ids if sequences.is_sequence(f)]
    else:
        known = [f for f in ids if f in mapping and sequences.is_sequence(mapping[f])]
    unknown = sorted(set(ids) - set(known))
    if unknown:
        log.warning("%d feature(s) of %s have no known sequence and are ignored (e.g. %s)%s", len(unknown),
                    table_path, ", ".join(unknown[:5]), "" if sequences_path else "; pass --sequences to map them")
        table = table.filter(known, axis="observation", inplace=False)
    return table, sequences.feature_sequences(known, mapping, table_path, sequences_path), unknown


def check_counts(table: biom.Table, table_path: str | Path, rarefied: bool) -> None:
    """InputError on negative or non-finite values, and on non-integer ones when the table is to be rarefied (a
    table of relative abundances rarefied to depth 1 would lose every sample)."""
    m = table.matrix_data.tocoo()
    bad = ~np.isfinite(m.data) | (m.data < 0)
    kind = "negative or non-finite"
    if not bad.any() and rarefied:
        bad = m.data != np.round(m.data)
        kind = "non-integer"
    if not bad.any():
        return
    k = int(np.flatnonzero(bad)[0])
    sample, feature = str(table.ids(axis="sample")[m.col[k]]), str(table.ids(axis="observation")[m.row[k]])
    fix = ("aam reads read counts: give the table of counts before any normalisation, or pass --rarefy-depth 0 to "
           "use the values as they are") if kind == "non-integer" else "counts must be finite and >= 0"
    raise InputError(f"{table_path}: {int(bad.sum())} {kind} values (e.g. {m.data[k]:g} in sample {sample!r}, "
                     f"feature {feature[:40]!r}); {fix}")


def prepare_table(table_path: str | Path, sequences_path: str | Path | None, depth: int | None, seed: int,
                  max_bp: int, sample_ids: list[str] | None = None, drop_unknown: bool = False,
                  table: biom.Table | None = None) -> PreparedTable:
    """Load, (optionally) restrict to `sample_ids`, rarefy (depth None = default, 0 = off), tokenize.

    drop_unknown (predict): features without a known sequence are ignored and samples left without reads or
    under the rarefaction depth are reported in `dropped` instead of raising. `table`: the counts already read
    from `table_path` (a chunk of its samples), instead of loading the file.
    """
    table = biom_io.load_table(table_path) if table is None else table
    if sample_ids is not None:
        table = table.filter(sample_ids, axis="sample", inplace=False)
    table, seqs, _ = _sequences_for(table, table_path, sequences_path, drop_unknown)
    check_counts(table, table_path, rarefied=depth != 0)
    dropped: dict[str, str] = {}
    totals = biom_io.sample_totals(table)
    ids = [str(s) for s in table.ids(axis="sample")]
    empty = [s for s, t in zip(ids, totals, strict=True) if t <= 0]
    if empty:
        if not drop_unknown:
            raise InputError(f"{len(empty)} sample(s) of {table_path} have no reads: {', '.join(empty[:10])}; "
                             "remove them from the table")
        dropped.update({s: "no reads on features with a known sequence" for s in empty})
        table = table.filter([s for s in ids if s not in dropped], axis="sample", inplace=False)
        totals = biom_io.sample_totals(table)
    if table.shape[1] == 0:
        return PreparedTable(table, np.zeros((0, max_bp + 1), np.uint8), dropped, depth or 0)
    if depth is None:
        depth = default_rarefy_depth(totals)
        log.info("rarefaction depth %d = min(%d, %dth percentile of sample depths); set --rarefy-depth to change",
                 depth, DEFAULT_MAX_DEPTH, DEPTH_PERCENTILE)
    seq_of = dict(zip((str(f) for f in table.ids(axis="observation")), seqs, strict=True))
    if depth > 0:
        if drop_unknown and depth > totals.max():
            dropped.update({str(s): f"fewer than {depth} reads (rarefaction depth)" for s in table.ids(axis="sample")})
            return PreparedTable(table.filter([], axis="sample", inplace=False), np.zeros((0, max_bp + 1), np.uint8),
                                 dropped, depth)
        table, info = biom_io.rarefy(table, depth, seed, table_path)
        dropped.update({s: f"fewer than {depth} reads (rarefaction depth)" for s in info.dropped_ids})
    feature_ids = [str(f) for f in table.ids(axis="observation")]
    feature_seqs = [seq_of[f] for f in feature_ids]
    tokens, _, report = tokenizer.tokenize(feature_seqs, max_bp, ids=feature_ids)
    report.log()
    return PreparedTable(table, tokens, dropped, depth, feature_seqs)


def make_dataset(prepared: PreparedTable, sample_ids: list[str], pre: Preprocessing,
                 targets: np.ndarray | None = None, categorical: np.ndarray | None = None) -> SampleDataset:
    """SampleDataset over `sample_ids` (in the table's order) of a prepared table; the token rows stay aligned."""
    from aam.data.dataset import SampleDataset  # torch: imported where a dataset is made

    table = prepared.table.filter(sample_ids, axis="sample", inplace=False)
    asv_ids = vocabulary_ids(pre.asv_vocabulary, prepared.sequences) if pre.asv_vocabulary is not None else None
    return SampleDataset(table, prepared.tokens, pre.token_limit, pre.asv_sampling, pre.seed, targets, categorical,
                         asv_ids)


def asv_vocabulary(prepared: PreparedTable, sample_ids: list[str]) -> list[str]:
    """Sequences of the ASVs that occur in `sample_ids` (the training samples), sorted: the ASVs that get an
    identity embedding."""
    table = prepared.table.filter(sample_ids, axis="sample", inplace=False)
    present = np.asarray(table.matrix_data.sum(axis=1)).ravel() > 0
    order = {f: i for i, f in enumerate(str(x) for x in prepared.table.ids(axis="observation"))}
    rows = [order[str(f)] for f, p in zip(table.ids(axis="observation"), present, strict=True) if p]
    return sorted({prepared.sequences[r] for r in rows})


def vocabulary_ids(vocabulary: list[str], sequences: list[str]) -> np.ndarray:
    """Identity index of each sequence: k + 1 for vocabulary[k], 0 for a sequence outside the vocabulary."""
    index = {s: k + 1 for k, s in enumerate(vocabulary)}
    return np.fromiter((index.get(s, 0) for s in sequences), dtype=np.int64, count=len(sequences))


def report_token_limit(dataset: SampleDataset, token_limit: int) -> None:
    n = dataset.n_asvs()
    over = int((n > token_limit).sum())
    if over:
        log.info("%d of %d samples have more than --token-limit %d ASVs (max %d); the %s ASVs are kept", over,
                 len(n), token_limit, int(n.max()), dataset.asv_selection)
