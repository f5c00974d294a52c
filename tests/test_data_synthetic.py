"""Synthetic data: deterministic by seed (byte-identical files), tree matches table, learnable targets."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import skbio

from aam.data.biom_io import load_table
from aam.data.metadata import load_metadata, numeric_target
from aam.data.sequences import feature_sequences
from aam.data.synthetic import make_dataset, write_dataset
from aam.data.tokenizer import tokenize
from subprocess_env import child_env


def _digest(paths: dict[str, Path]) -> dict[str, str]:
    return {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in paths.items()}


def test_same_seed_byte_identical_files(tmp_path: Path) -> None:
    a = write_dataset(make_dataset(60, n_features=120, seed=5), tmp_path / "a")
    b = write_dataset(make_dataset(60, n_features=120, seed=5), tmp_path / "b")
    assert _digest(a) == _digest(b)
    c = write_dataset(make_dataset(60, n_features=120, seed=6), tmp_path / "c")
    assert _digest(a)["table"] != _digest(c)["table"]


def test_files_readable_and_consistent(tmp_path: Path) -> None:
    ds = make_dataset(80, n_features=150, seed=1)
    paths = write_dataset(ds, tmp_path)
    table = load_table(paths["table"])
    assert table.shape == ds.table.shape
    seqs = feature_sequences(table.ids(axis="observation"))  # feature IDs are sequences
    assert len(set(seqs)) == len(seqs)
    assert all(100 <= len(s) <= 150 for s in seqs)
    tokens, lengths, report = tokenize(seqs, max_bp=150)
    assert report.n_ambiguous_sequences == 0 and report.n_truncated == 0
    tree = skbio.TreeNode.read(str(paths["tree"]))
    assert {t.name for t in tree.tips()} == set(seqs)  # tips match the table's feature IDs
    assert all(n.length is not None and n.length >= 0 for n in tree.traverse() if n is not tree)
    assert len(tree.children) == 2  # rooted binary
    md = load_metadata(paths["metadata"])
    assert md.index.tolist() == list(table.ids())
    assert {"ph", "body_site", "subject"} <= set(md.columns)
    ph, mask = numeric_target(md, "ph", list(table.ids()))
    assert mask.mean() > 0.9
    totals = np.asarray(table.sum(axis="sample"))
    assert (totals > 0).all() and totals.std() > 0  # varying depth
    assert md["subject"].nunique() < len(md)


def test_related_asvs_share_sequence() -> None:
    ds = make_dataset(50, n_features=100, seed=2)
    a = np.array([list(s[:100]) for s in ds.sequences])
    d = (a[:, None, :] != a[None, :, :]).mean(-1)
    nearest = np.sort(d, axis=1)[:, 1]
    # Evolved along a tree: close relatives differ at a few sites, unrelated random sequences at ~75%.
    assert np.median(nearest) < 0.15
    assert d.max() < 0.7


def test_targets_follow_community() -> None:
    ds = make_dataset(400, n_features=200, seed=3)
    x = ds.table.matrix_data.toarray().T
    x = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    ph = ds.metadata["ph"].replace("not provided", np.nan).astype(float).to_numpy()
    ok = np.isfinite(ph)
    x, ph = x[ok], ph[ok]
    tr, te = slice(0, 300), slice(300, None)
    # Ridge regression on log relative abundances predicts ph well out of sample.
    xm = x[tr].mean(0)
    a = x[tr] - xm
    w = np.linalg.solve(a.T @ a + 300.0 * np.eye(a.shape[1]), a.T @ (ph[tr] - ph[tr].mean()))
    pred = (x[te] - xm) @ w + ph[tr].mean()
    r2 = 1 - ((pred - ph[te]) ** 2).sum() / ((ph[te] - ph[te].mean()) ** 2).sum()
    assert r2 > 0.5


def test_module_cli(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "aam.data.synthetic", "--n-samples", "20", "--n-features", "50", "--out", str(tmp_path)],
        capture_output=True, text=True, env=child_env(), check=True,
    )  # fmt: skip
    assert "wrote 20 samples" in out.stdout
    assert (tmp_path / "table.biom").is_file() and (tmp_path / "tree.nwk").is_file()
