"""UniFrac distances between samples (unweighted, weighted, generalized) and Faith's PD, all in one place.

Definitions follow scikit-bio (`beta_diversity("unweighted_unifrac" | "weighted_unifrac")`,
`alpha_diversity("faith_pd")`): every node's branch counts, the root's too when it has a length.
Generalized UniFrac (Chen et al. 2012) with alpha in [0, 1]; alpha = 1 is weighted normalized.

- tree.py: Newick parsing (C++ with a scikit-bio fallback), `Tree`, and `tips_table`, the table mapped
  onto the tree's tips (CSR arrays the engines read).
- custom.py: the `custom` backend, the C++/OpenMP striped engine (csrc/cpu/unifrac.cpp).
- reference.py: the `math` backend, a plain numpy implementation of the formulas (slow; the reference).
- dispatch.py: registration (op "unifrac" in aam.ops.registry) and the public `unifrac` / `faith_pd`.
- tree_distances.py: `TreeDistances`, the per-batch distance source for training (no N x N matrix).

Distance-matrix files (`DistanceMatrix`, read/write) are a data format: aam.data.distances.
"""

from __future__ import annotations

import importlib
from typing import Any

from aam.ops.unifrac.metrics import ALL_METRICS, METRICS, check_metric, unifrac_dtype
from aam.ops.unifrac.tree import (
    TipsTable,
    Tree,
    from_skbio,
    load_table,
    load_tree,
    parse_newick,
    read_tree,
    tips_table,
)
from aam.ops.unifrac.tree_distances import TreeDistances

_DISPATCH = ("OP", "faith_pd", "unifrac")


def __getattr__(name: str) -> Any:
    """The public op and its registration load (with torch) on first use; `aam unifrac` runs without them."""
    if name in _DISPATCH:
        return getattr(importlib.import_module("aam.ops.unifrac.dispatch"), name)
    raise AttributeError(f"module 'aam.ops.unifrac' has no attribute {name!r}")

__all__ = [
    "ALL_METRICS", "METRICS", "OP", "TipsTable", "Tree", "TreeDistances", "check_metric", "faith_pd", "from_skbio",
    "load_table", "load_tree", "parse_newick", "read_tree", "tips_table", "unifrac", "unifrac_dtype",
]
