"""Phylogenetic trees for UniFrac: fast Newick reading (C++) and mapping a BIOM table onto the tips.

A `Tree` holds the nodes in postorder (the root last; `parent[v] > v` for every other node), branch
lengths (NaN where missing) and names. `tips_table` turns a biom.Table into the CSR arrays that the
UniFrac engine reads: one row per table feature, on the tip node with the same name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aam import native
from aam.errors import InputError

log = logging.getLogger("aam.ops.unifrac")


@dataclass
class Tree:
    parent: np.ndarray  # int32 [n], postorder, -1 for the root (last)
    length: np.ndarray  # float64 [n], NaN where the Newick gives no length
    names: list[str]    # "" when unnamed
    is_tip: np.ndarray  # bool [n]
    source: str = "<tree>"

    @property
    def n_nodes(self) -> int:
        return len(self.parent)

    @property
    def n_tips(self) -> int:
        return int(self.is_tip.sum())

    def tip_index(self) -> dict[str, int]:
        """Tip name -> node index (named tips only)."""
        return {self.names[i]: int(i) for i in np.flatnonzero(self.is_tip) if self.names[i]}

    def lengths(self) -> np.ndarray:
        """Branch lengths with missing ones read as 0 (scikit-bio's convention)."""
        return np.nan_to_num(self.length, nan=0.0)


def _validate(tree: Tree) -> Tree:
    n = tree.n_nodes
    if n == 0:
        raise InputError(f"{tree.source}: the tree has no nodes")
    nonroot = tree.parent >= 0
    if n > 1 and np.isnan(tree.length[nonroot]).all():
        raise InputError(
            f"{tree.source}: the tree has no branch lengths; UniFrac needs a tree with branch lengths "
            "(e.g. from FastTree, IQ-TREE or SEPP)"
        )
    lengths = tree.length[nonroot]
    bad = np.flatnonzero(nonroot)[np.isinf(lengths) | (lengths < 0)]
    if len(bad):
        v = int(bad[0])
        name = repr(tree.names[v]) if tree.names[v] else f"unnamed node {v} (postorder)"
        raise InputError(
            f"{tree.source}: {len(bad)} branches have a negative or infinite length (e.g. {tree.length[v]:g} above "
            f"{name}); UniFrac needs lengths >= 0: root and rebuild the tree, or set negative lengths to 0"
        )
    missing = int(np.isnan(tree.length[nonroot]).sum())
    if missing:
        log.warning("%s: %d branches have no length; they count as length 0", tree.source, missing)
    tip_names = [tree.names[i] for i in np.flatnonzero(tree.is_tip) if tree.names[i]]
    if len(set(tip_names)) != len(tip_names):
        seen: set[str] = set()
        dups = sorted({t for t in tip_names if t in seen or seen.add(t)})
        raise InputError(
            f"{tree.source}: {len(dups)} duplicate tip names, e.g. {', '.join(map(repr, dups[:5]))}; "
            "tip names must be unique"
        )
    return tree


def parse_newick(text: str | bytes, source: str = "<newick>") -> Tree:
    """Parse Newick text (C++ parser; scikit-bio's reader when aam._C is not built)."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    mod = native.cpu_module()
    if mod is None or not hasattr(mod, "newick_parse"):
        return _validate(_from_skbio_text(data.decode(), source))
    try:
        parent, length, names, is_tip = mod.newick_parse(data)
    except ValueError as exc:
        raise InputError(f"{source}: {exc}") from None
    return _validate(Tree(parent, length, names, is_tip, source))


def read_tree(path: str | Path) -> Tree:
    """Read a Newick file or a QIIME 2 Phylogeny .qza (e.g. rooted-tree.qza)."""
    path = Path(path)
    if path.suffix.lower() == ".qza":
        from aam.data.sequences import read_qza_tree

        return parse_newick(read_qza_tree(path).encode("utf-8"), source=str(path))
    return parse_newick(path.read_bytes(), source=str(path))


def from_skbio(node: Any, source: str = "<skbio.TreeNode>") -> Tree:
    """Convert a scikit-bio TreeNode (postorder numbering)."""
    nodes = list(node.postorder(include_self=True))
    index = {id(x): i for i, x in enumerate(nodes)}
    parent = np.array([index[id(x.parent)] if x.parent is not None and id(x.parent) in index else -1
                       for x in nodes], dtype=np.int32)
    length = np.array([np.nan if x.length is None else float(x.length) for x in nodes], dtype=np.float64)
    names = ["" if x.name is None else str(x.name) for x in nodes]
    is_tip = np.array([x.is_tip() for x in nodes], dtype=bool)
    return _validate(Tree(parent, length, names, is_tip, source))


def _from_skbio_text(text: str, source: str) -> Tree:
    import io

    import skbio

    try:
        node = skbio.TreeNode.read(io.StringIO(text), format="newick", convert_underscores=False)
    except Exception as exc:
        raise InputError(f"{source}: unparseable Newick ({exc})") from None
    return from_skbio(node, source)


def load_tree(tree: Any) -> Tree:
    """A Tree from a path, Newick text, a Tree or a scikit-bio TreeNode."""
    if isinstance(tree, Tree):
        return tree
    if isinstance(tree, (str, Path)):
        if isinstance(tree, str) and tree.lstrip().startswith("("):
            return parse_newick(tree)
        return read_tree(tree)
    if hasattr(tree, "postorder") and hasattr(tree, "is_tip"):
        return from_skbio(tree)
    raise InputError(f"tree must be a Newick path, Newick text, aam Tree or skbio TreeNode, not {type(tree).__name__}")


@dataclass
class TipsTable:
    """A table restricted to tree tips: feature row f sits on tip feat_node[f] (CSR over samples)."""

    sample_ids: list[str]
    feature_ids: list[str]
    feat_node: np.ndarray  # int32 [F]
    indptr: np.ndarray     # int64 [F + 1]
    indices: np.ndarray    # int32 [nnz] sample index
    data: np.ndarray       # float64 [nnz] counts
    n_dropped: int = 0

    @property
    def n_samples(self) -> int:
        return len(self.sample_ids)

    def dense(self) -> np.ndarray:
        """[F, N] counts (for references and tests)."""
        out = np.zeros((len(self.feature_ids), self.n_samples))
        rows = np.repeat(np.arange(len(self.feature_ids)), np.diff(self.indptr))
        np.add.at(out, (rows, self.indices), self.data)
        return out


def load_table(table: Any) -> Any:
    """A biom.Table from a path or a biom.Table."""
    if isinstance(table, (str, Path)):
        import biom

        if not Path(table).exists():
            raise FileNotFoundError(2, "No such file", str(table))
        try:
            return biom.load_table(str(table))
        except Exception as exc:
            raise InputError(f"{table}: cannot read the BIOM table ({exc})") from None
    return table


def tips_table(table: Any, tree: Tree, drop_missing_features: bool = False, source: str | None = None) -> TipsTable:
    """Map the table's features onto the tree's tips (features must be tips unless dropped)."""
    import scipy.sparse as sp

    src = source or (str(table) if isinstance(table, (str, Path)) else "table")
    table = load_table(table)
    sample_ids = [str(s) for s in table.ids(axis="sample")]
    feature_ids = [str(f) for f in table.ids(axis="observation")]
    tips = tree.tip_index()
    node = np.array([tips.get(f, -1) for f in feature_ids], dtype=np.int64)
    missing = np.flatnonzero(node < 0)
    keep = np.flatnonzero(node >= 0)
    if len(missing) and not drop_missing_features:
        first = ", ".join(feature_ids[i] for i in missing[:10])
        raise InputError(
            f"{src}: {len(missing)} of {len(feature_ids)} features are not tips of the tree {tree.source} "
            f"(first: {first}); pass --drop-missing-features (drop_missing_features=True) to drop them"
        )
    if feature_ids and not len(keep):
        raise InputError(
            f"{src}: none of its {len(feature_ids)} features is a tip of the tree {tree.source} (table feature "
            f"{feature_ids[0]!r}, tree tip {next(iter(tips), '')!r}); give the tree built for this table's ASVs"
        )
    if len(missing):
        log.warning("%s: dropped %d features that are not tips of %s", src, len(missing), tree.source)
    m = sp.csr_matrix(table.matrix_data)[keep]
    m.sum_duplicates()
    m.sort_indices()
    data = np.asarray(m.data, dtype=np.float64)
    if data.size and (not np.isfinite(data).all() or data.min() < 0):
        raise InputError(f"{src}: counts must be finite and non-negative")
    return TipsTable(
        sample_ids=sample_ids,
        feature_ids=[feature_ids[i] for i in keep],
        feat_node=node[keep].astype(np.int32),
        indptr=np.asarray(m.indptr, dtype=np.int64),
        indices=np.asarray(m.indices, dtype=np.int32),
        data=data,
        n_dropped=len(missing),
    )
