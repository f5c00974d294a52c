"""Random trees and tables for the UniFrac tests and benchmarks."""

from __future__ import annotations

import numpy as np


def random_newick(n_tips: int, rng: np.random.Generator, root_length: float | None = None,
                  zero_frac: float = 0.05, polytomy_frac: float = 0.1) -> str:
    """A random rooted tree on tips t0..t{n-1} with random branch lengths (some zero, some polytomies)."""
    nodes = [f"t{i}" for i in range(n_tips)]

    def length() -> str:
        return "0" if rng.random() < zero_frac else f"{rng.exponential(0.1):.6g}"

    while len(nodes) > 1:
        k = 3 if len(nodes) >= 3 and rng.random() < polytomy_frac else 2
        pick = sorted(rng.choice(len(nodes), size=k, replace=False), reverse=True)
        kids = [nodes.pop(i) for i in pick]
        nodes.append("(" + ",".join(f"{c}:{length()}" for c in kids) + ")")
    root = nodes[0] if nodes[0].startswith("(") else f"({nodes[0]}:{length()})"
    return root + ("" if root_length is None else f":{root_length}") + ";"


def random_counts(n_samples: int, n_features: int, rng: np.random.Generator, density: float = 0.2) -> np.ndarray:
    """[features, samples] sparse-ish integer counts with one empty sample."""
    x = rng.poisson(rng.gamma(0.5, 20.0, size=(n_features, n_samples))) * (rng.random((n_features, n_samples)) < density)
    if n_samples > 2:
        x[:, 1] = 0
    return x.astype(np.float64)


def random_table(n_samples: int, n_features: int, rng: np.random.Generator, density: float = 0.2,
                 feature_ids: list[str] | None = None):
    import biom

    x = random_counts(n_samples, n_features, rng, density)
    fids = feature_ids or [f"t{i}" for i in range(n_features)]
    return biom.Table(x, fids, [f"s{i}" for i in range(n_samples)])
