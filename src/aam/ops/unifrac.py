"""UniFrac distances between samples (unweighted, weighted, generalized) and Faith's PD.

Definitions follow scikit-bio (`beta_diversity("unweighted_unifrac" | "weighted_unifrac")`,
`alpha_diversity("faith_pd")`): every node's branch counts, the root's too when it has a length.
Generalized UniFrac (Chen et al. 2012) with alpha in [0, 1]; alpha = 1 is weighted normalized.

Backends (op "unifrac" in aam.ops.registry): `custom`, the C++/OpenMP striped engine
(csrc/cpu/unifrac.cpp), and `math`, a plain numpy implementation of the formulas (slow; the reference).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from aam import native
from aam.data.newick import TipsTable, Tree, load_tree, tips_table
from aam.errors import AAMError, InputError
from aam.ops import registry

OP = "unifrac"
METRICS = {"unweighted": 0, "weighted_normalized": 1, "weighted_unnormalized": 2, "generalized": 3}
ALL_METRICS = (*METRICS, "faith_pd")

try:  # the data layer's distance matrix, when present
    from aam.data.distances import DistanceMatrix  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the branch

    @dataclass
    class DistanceMatrix:  # type: ignore[no-redef]
        """Sample IDs and their [N, N] distances."""

        ids: list[str]
        data: np.ndarray
        _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

        def index(self, sample_ids: list[str]) -> np.ndarray:
            if not self._index:
                self._index = {s: i for i, s in enumerate(self.ids)}
            missing = [s for s in sample_ids if s not in self._index]
            if missing:
                raise InputError(f"{len(missing)} sample IDs are not in the distance matrix, e.g. {missing[:5]}")
            return np.array([self._index[s] for s in sample_ids], dtype=np.int64)

        def pairs(self, sample_ids: list[str]) -> np.ndarray:
            """[B, B] float64 distances among `sample_ids`."""
            idx = self.index(list(sample_ids))
            return np.asarray(self.data[np.ix_(idx, idx)], dtype=np.float64)


def check_metric(metric: str, alpha: float | None) -> float:
    """Validate the metric name and return alpha (0.5 by default for generalized)."""
    if metric not in ALL_METRICS:
        raise AAMError(f"unknown UniFrac metric {metric!r}; choose one of {', '.join(ALL_METRICS)}")
    if alpha is not None and metric != "generalized":
        raise AAMError(f"alpha applies only to metric 'generalized', not {metric!r}")
    a = 0.5 if alpha is None else float(alpha)
    if not 0.0 <= a <= 1.0:
        raise AAMError(f"alpha must be in [0, 1], got {a}")
    return a


def _dtype(dtype: str | np.dtype | torch.dtype) -> np.dtype:
    name = str(dtype).replace("torch.", "")
    if name not in ("float32", "float64"):
        raise AAMError(f"dtype must be float32 or float64, not {dtype}")
    return np.dtype(name)


# ---- custom backend (C++) ---------------------------------------------------------------------------

def _args(tree: Tree, t: TipsTable) -> tuple:
    return (tree.parent, tree.length, t.feat_node, t.indptr, t.indices, t.data, t.n_samples)


def unifrac_custom(
    tree: Tree, t: TipsTable, metric: str, alpha: float, threads: int | None, dtype: np.dtype,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    mod = native.cpu_module()
    try:
        if metric == "faith_pd":
            return mod.unifrac_faith_pd(*_args(tree, t))
        return mod.unifrac_matrix(*_args(tree, t), METRICS[metric], alpha, dtype == np.float32,
                                  int(threads or 0), progress)
    except ValueError as exc:
        raise InputError(f"{tree.source}: {exc}") from None


def _check_custom(req: registry.KernelRequest) -> str | None:
    mod = native.cpu_module()
    if mod is None:
        return native.load_error("_C") or "aam._C not built"
    if not hasattr(mod, "unifrac_matrix"):
        return "aam._C was built without the UniFrac engine"
    if req.dtype not in (None, torch.float32, torch.float64):
        return f"dtype {req.dtype} not supported (float32, float64)"
    return None


# ---- math backend (numpy reference) -----------------------------------------------------------------

def node_counts(tree: Tree, t: TipsTable) -> np.ndarray:
    """[n_nodes, N] counts below each node (postorder accumulation)."""
    c = np.zeros((tree.n_nodes, t.n_samples))
    c[t.feat_node] = t.dense()
    parent = tree.parent
    for v in range(tree.n_nodes):  # postorder: children come before parents
        if parent[v] >= 0:
            c[parent[v]] += c[v]
    return c


def unifrac_math(
    tree: Tree, t: TipsTable, metric: str, alpha: float, threads: int | None, dtype: np.dtype,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Direct evaluation of the definitions, pair by pair (vectorised over nodes)."""
    if np.any(tree.parent[:-1] <= np.arange(tree.n_nodes - 1)) or tree.parent[-1] != -1:
        raise InputError(f"{tree.source}: the math backend needs nodes in postorder")
    b = tree.lengths()
    c = node_counts(tree, t)  # [nodes, N]
    n = t.n_samples
    present = (c > 0).T.astype(np.float64)  # [N, nodes]
    if metric == "faith_pd":
        return present @ b
    totals = c[-1] if tree.n_nodes else np.zeros(n)
    prop = np.divide(c, totals, out=np.zeros_like(c), where=totals > 0).T  # [N, nodes]
    # scikit-bio's normalization: tip-to-root distances (the root's own length included)
    depth = b.copy()
    for v in range(tree.n_nodes - 2, -1, -1):  # preorder (reverse postorder)
        depth[v] += depth[tree.parent[v]]
    tipdist = np.where(tree.is_tip, depth, 0.0)
    out = np.zeros((n, n))
    for i in range(n):
        if metric == "unweighted":
            unique = (b * (present[i] != present)).sum(1)
            observed = (b * np.maximum(present[i], present)).sum(1)
            d = np.divide(unique, observed, out=np.zeros(n), where=observed > 0)
        elif metric in ("weighted_normalized", "weighted_unnormalized"):
            d = (b * np.abs(prop[i] - prop)).sum(1)
            if metric == "weighted_normalized":
                cn = (tipdist * (prop[i] + prop)).sum(1)
                both_empty = (totals[i] == 0) & (totals == 0)
                d = np.divide(d, cn, out=np.zeros(n), where=~both_empty & (cn != 0))
        else:
            s = prop[i] + prop
            safe = np.where(s > 0, s, 1.0)
            w = np.where(s > 0, b * safe**alpha, 0.0)
            num = (w * np.abs(prop[i] - prop) / safe).sum(1)
            den = w.sum(1)
            d = np.divide(num, den, out=np.zeros(n), where=den > 0)
        out[i] = d
        if progress is not None:
            progress(i + 1, n)
    np.fill_diagonal(out, 0.0)
    return out.astype(dtype)


def _check_math(req: registry.KernelRequest) -> str | None:
    if req.dtype not in (None, torch.float32, torch.float64):
        return f"dtype {req.dtype} not supported (float32, float64)"
    return None


registry.register(OP, "custom", unifrac_custom, _check_custom, priority=10)
registry.register(OP, "math", unifrac_math, _check_math, priority=0)


# ---- public API -------------------------------------------------------------------------------------

def unifrac(
    table: Any,
    tree: Any,
    metric: str = "unweighted",
    alpha: float | None = None,
    threads: int | None = None,
    dtype: str = "float64",
    drop_missing_features: bool = False,
    backend: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """UniFrac distances between the samples of `table` (biom.Table or path) on `tree` (path or Tree).

    metric: unweighted | weighted_normalized | weighted_unnormalized | generalized (alpha, default
    0.5) | faith_pd. Returns a DistanceMatrix (`.ids`, `.data` [N, N], `.pairs(ids)`), or for
    faith_pd a pandas Series indexed by sample ID. threads: OpenMP threads (default: all cores).
    Features that are not tips of the tree are an InputError unless `drop_missing_features`.
    progress(done, total) is called now and then (nodes of the tree).
    """
    a = check_metric(metric, alpha)
    np_dtype = _dtype(dtype)
    tr = load_tree(tree)
    t = tips_table(table, tr, drop_missing_features)
    torch_dtype = torch.float32 if np_dtype == np.float32 else torch.float64
    impl = registry.select(OP, registry.resolve_name(OP, backend), registry.KernelRequest(torch.device("cpu"), torch_dtype))
    result = impl.fn(tr, t, metric, a, threads, np_dtype, progress)
    if metric == "faith_pd":
        import pandas as pd

        return pd.Series(np.asarray(result, dtype=np.float64), index=t.sample_ids, name="faith_pd")
    return DistanceMatrix(list(t.sample_ids), result)


def faith_pd(table: Any, tree: Any, drop_missing_features: bool = False, backend: str = "auto") -> Any:
    """Faith's phylogenetic diversity per sample (pandas Series indexed by sample ID)."""
    return unifrac(table, tree, "faith_pd", drop_missing_features=drop_missing_features, backend=backend)
