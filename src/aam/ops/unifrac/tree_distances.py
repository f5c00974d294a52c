"""UniFrac targets for a batch, computed on the fly from a table and a tree (no N x N matrix).

`TreeDistances` prepares, once, each sample's sorted list of tree branches with its proportion of the
sample's counts (C++: aam._C.unifrac_sample_state). The distance of a pair then costs
O(|branches_i| + |branches_j|) (aam._C.unifrac_state_pairs), so memory grows with N, never N^2. The
state is plain numpy arrays: it pickles, and forked DataLoader workers share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from aam import native
from aam.errors import AAMError, InputError
from aam.ops.unifrac.metrics import METRICS
from aam.ops.unifrac.tree import load_tree, tips_table

ALL_FEATURES = "__aam_all_features__"


class Chunks:
    """Tables of disjoint samples over the same features, read one after another (a table too big to hold):
    `TreeDistances(Chunks(tables), tree)` builds one state from them, holding one table at a time."""

    def __init__(self, tables: Iterable[Any]) -> None:
        self.tables = tables

    def __iter__(self) -> Iterator[Any]:
        return iter(self.tables)


def with_all_features(table: Any) -> Any:
    """`table` plus a last sample holding every feature, so that every chunk's state has the same branches."""
    import biom
    import scipy.sparse as sp

    ones = sp.csc_matrix(np.ones((table.shape[0], 1)))
    m = sp.hstack([sp.csc_matrix(table.matrix_data), ones], format="csc")
    return biom.Table(m, list(table.ids(axis="observation")), [*table.ids(axis="sample"), ALL_FEATURES])


class TreeDistances:
    """Distance source with `.ids` and `.pairs(sample_ids) -> [B, B] float64` (UniFrac from a tree).

    table: a biom Table (or what `load_table` reads), or `Chunks` of tables.
    threads: OpenMP threads for batches of more than 64 samples (default: all cores; pass 1 inside
    DataLoader workers); smaller batches run on one thread.
    """

    def __init__(
        self,
        table: Any,
        tree: Any,
        metric: str = "unweighted",
        alpha: float | None = None,
        threads: int | None = None,
        drop_missing_features: bool = False,
    ) -> None:
        if metric not in METRICS:
            raise AAMError(f"unknown UniFrac metric {metric!r} for batch targets; choose one of {', '.join(METRICS)}")
        if alpha is not None and metric != "generalized":
            raise AAMError(f"alpha applies only to metric 'generalized', not {metric!r}")
        self.metric = metric
        self.alpha = 0.5 if alpha is None else float(alpha)
        if not 0.0 <= self.alpha <= 1.0:
            raise AAMError(f"alpha must be in [0, 1], got {self.alpha}")
        self.threads = int(threads or 0)
        mod = native.cpu_module()
        if mod is None or not hasattr(mod, "unifrac_sample_state"):
            raise AAMError(f"on-the-fly UniFrac needs the compiled aam._C ({native.load_error('_C') or 'not built'})")
        tr = load_tree(tree)
        chunked = isinstance(table, Chunks)
        parts, self.ids, self.n_dropped = [], [], 0
        for chunk in table if chunked else [table]:
            if chunked:  # one more sample on every feature: the same branches in every chunk
                chunk = with_all_features(chunk)
            t = tips_table(chunk, tr, drop_missing_features)
            try:
                state = mod.unifrac_sample_state(tr.parent, tr.length, t.feat_node, t.indptr, t.indices, t.data,
                                                 t.n_samples)
            except ValueError as exc:
                raise InputError(f"{tr.source}: {exc}") from None
            n = len(t.sample_ids) - chunked
            offsets, rows, values, row_len = state
            if parts and not np.array_equal(row_len, parts[0][3]):
                raise AAMError("UniFrac state of a chunk has other branches than the first chunk's")
            parts.append((offsets[: n + 1], rows[: offsets[n]], values[: offsets[n]], row_len))
            self.ids += t.sample_ids[:n]
            self.n_dropped = t.n_dropped
        self._index = {s: i for i, s in enumerate(self.ids)}
        if len(parts) == 1:
            self.offsets, self.rows, self.values, self.row_len = parts[0]
        else:
            ends = np.cumsum([0] + [p[0][-1] for p in parts[:-1]])
            self.offsets = np.concatenate([parts[0][0][:1]] + [p[0][1:] + e for p, e in zip(parts, ends, strict=True)])
            self.rows = np.concatenate([p[1] for p in parts])
            self.values = np.concatenate([p[2] for p in parts])
            self.row_len = parts[0][3]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Memory held by the per-sample state."""
        return sum(a.nbytes for a in (self.offsets, self.rows, self.values, self.row_len))

    def index(self, sample_ids: list[str]) -> np.ndarray:
        try:
            return np.fromiter((self._index[s] for s in sample_ids), dtype=np.int64, count=len(sample_ids))
        except KeyError as exc:
            raise InputError(f"sample {exc.args[0]!r} is not in the table used for UniFrac targets") from None

    def pairs(self, sample_ids: list[str]) -> np.ndarray:
        """[B, B] float64 UniFrac distances among `sample_ids` (in that order)."""
        return self.pairs_by_index(self.index(list(sample_ids)))

    def pairs_by_index(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        # Small batches take well under a millisecond: waking threads would cost more than it saves.
        threads = 1 if len(idx) <= 64 else self.threads
        return native.cpu_module().unifrac_state_pairs(
            self.offsets, self.rows, self.values, self.row_len, idx, METRICS[self.metric], self.alpha, threads,
        )
