"""The `math` backend of UniFrac: a plain numpy evaluation of the definitions, pair by pair (slow; the reference)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from aam.errors import InputError
from aam.ops.unifrac.metrics import dtype_reason
from aam.ops.unifrac.tree import TipsTable, Tree

if TYPE_CHECKING:
    from aam.ops.registry import KernelRequest


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


def check(req: KernelRequest) -> str | None:
    return dtype_reason(req.dtype)
