"""The `custom` backend of UniFrac: the C++/OpenMP striped engine of aam._C (csrc/cpu/unifrac.cpp)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from aam import native
from aam.errors import InputError
from aam.ops.unifrac.metrics import METRICS, dtype_reason
from aam.ops.unifrac.tree import TipsTable, Tree

if TYPE_CHECKING:
    from aam.ops.registry import KernelRequest


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


def engine_unavailable() -> str | None:
    """Why the C++ engine cannot run here (None: it can)."""
    mod = native.cpu_module()
    if mod is None:
        return native.load_error("_C") or "aam._C not built"
    if not hasattr(mod, "unifrac_matrix"):
        return "aam._C was built without the UniFrac engine"
    return None


def check(req: KernelRequest) -> str | None:
    return engine_unavailable() or dtype_reason(req.dtype)
