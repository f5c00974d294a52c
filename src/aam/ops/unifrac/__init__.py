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

from aam.ops.unifrac.custom import METRICS
from aam.ops.unifrac.dispatch import ALL_METRICS, OP, check_metric, faith_pd, unifrac, unifrac_dtype
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

__all__ = [
    "ALL_METRICS", "METRICS", "OP", "TipsTable", "Tree", "TreeDistances", "check_metric", "faith_pd", "from_skbio",
    "load_table", "load_tree", "parse_newick", "read_tree", "tips_table", "unifrac", "unifrac_dtype",
]
