"""UniFrac distances between samples (unweighted, weighted, generalized) and Faith's PD."""

from __future__ import annotations

from typing import Any


def unifrac(table: Any, tree: Any, metric: str = "unweighted", **kwargs: Any) -> Any:
    """Distances between the samples of `table` on `tree`. Implemented by the native UniFrac engine."""
    raise NotImplementedError("native UniFrac lands with the UniFrac issue")
