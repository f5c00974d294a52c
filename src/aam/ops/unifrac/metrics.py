"""UniFrac metric names, their engine codes and the option checks (no torch: `aam unifrac` starts without it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from aam.errors import AAMError

METRICS = {"unweighted": 0, "weighted_normalized": 1, "weighted_unnormalized": 2, "generalized": 3}  # engine codes
ALL_METRICS = (*METRICS, "faith_pd")


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


def unifrac_dtype(dtype: Any) -> np.dtype:
    """The numpy dtype of a `dtype` option: float32 or float64, as a name, numpy or torch dtype (AAMError
    otherwise)."""
    name = str(dtype).replace("torch.", "")
    if name not in ("float32", "float64"):
        raise AAMError(f"dtype must be float32 or float64, not {dtype}")
    return np.dtype(name)


def dtype_reason(dtype: Any) -> str | None:
    """Why a kernel request's dtype cannot run UniFrac (None: it can; None means the default, float64)."""
    if dtype is None or str(dtype).replace("torch.", "") in ("float32", "float64"):
        return None
    return f"dtype {dtype} not supported (float32, float64)"
