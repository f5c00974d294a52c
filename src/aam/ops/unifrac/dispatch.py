"""Backend registration and the public functions of UniFrac: `unifrac` (distance matrices) and `faith_pd`.

`auto` takes custom (10), the C++ engine, else math (0), the numpy reference (aam.ops.registry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from aam.data.distances import DistanceMatrix
from aam.ops import registry
from aam.ops.registry import KernelRequest
from aam.ops.unifrac import custom, reference
from aam.ops.unifrac.metrics import ALL_METRICS, check_metric, unifrac_dtype
from aam.ops.unifrac.tree import load_tree, tips_table

OP = "unifrac"
__all__ = ["ALL_METRICS", "OP", "check_metric", "faith_pd", "unifrac", "unifrac_dtype"]

registry.register(OP, "custom", custom.unifrac_custom, custom.check, priority=10)
registry.register(OP, "math", reference.unifrac_math, reference.check, priority=0)


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
    np_dtype = unifrac_dtype(dtype)
    tr = load_tree(tree)
    t = tips_table(table, tr, drop_missing_features)
    torch_dtype = torch.float32 if np_dtype == np.float32 else torch.float64
    impl = registry.select(OP, registry.resolve_name(OP, backend), KernelRequest(torch.device("cpu"), torch_dtype))
    result = impl.fn(tr, t, metric, a, threads, np_dtype, progress)
    if metric == "faith_pd":
        import pandas as pd

        return pd.Series(np.asarray(result, dtype=np.float64), index=t.sample_ids, name="faith_pd")
    return DistanceMatrix(list(t.sample_ids), result)


def faith_pd(table: Any, tree: Any, drop_missing_features: bool = False, backend: str = "auto") -> Any:
    """Faith's phylogenetic diversity per sample (pandas Series indexed by sample ID)."""
    return unifrac(table, tree, "faith_pd", drop_missing_features=drop_missing_features, backend=backend)
