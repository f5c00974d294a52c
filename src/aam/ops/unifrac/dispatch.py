"""Backend registration and the public functions of UniFrac: `unifrac` (distance matrices) and `faith_pd`.

`auto` takes custom (10), the C++ engine, else math (0), the numpy reference (aam.ops.registry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from aam.data.distances import DistanceMatrix
from aam.errors import AAMError
from aam.ops import registry
from aam.ops.registry import KernelRequest
from aam.ops.unifrac import custom, reference
from aam.ops.unifrac.custom import METRICS
from aam.ops.unifrac.tree import load_tree, tips_table

OP = "unifrac"
ALL_METRICS = (*METRICS, "faith_pd")

registry.register(OP, "custom", custom.unifrac_custom, custom.check, priority=10)
registry.register(OP, "math", reference.unifrac_math, reference.check, priority=0)


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


def unifrac_dtype(dtype: str | np.dtype | torch.dtype) -> np.dtype:
    """The numpy dtype of a `dtype` option (float32 or float64; AAMError otherwise)."""
    name = str(dtype).replace("torch.", "")
    if name not in ("float32", "float64"):
        raise AAMError(f"dtype must be float32 or float64, not {dtype}")
    return np.dtype(name)


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
