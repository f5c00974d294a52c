"""Realistic synthetic 16S datasets, no downloads: tree, evolved ASV sequences, communities, metadata.

Model (all seeded; same seed -> identical table, tree and metadata files):
- a random rooted binary tree of `n_features` tips (Yule process, random joining), height 1;
- a random root sequence evolved down the tree (substitutions ~ Poisson(rate x branch length x length),
  per-site rates from a gamma distribution so some regions are conserved); tips are truncated to lengths
  in [min_len, max_len] and kept unique; the ASV sequences are the feature IDs and the tree tip names;
- per feature, a baseline abundance and a response to each of `n_gradients` latent gradients, both
  Brownian traits on the tree (related ASVs respond alike) plus feature-specific noise;
- per sample, a latent position z (subject effect + sample noise); log-abundance
  eta = baseline + strength * z . response + noise; ASVs with eta above a threshold are present
  (richness varies along the gradients); reads ~ Poisson(depth * softmax(eta over present ASVs)),
  with a log-normal depth per sample and a few shallow samples;
- metadata: `ph` and `temperature` = linear in z + noise (different directions), `body_site` = noisy argmax
  of directions in z, `subject`; about 2% of ph, temperature and body_site are "not provided".
Unobserved features are dropped from the table and pruned from the tree, so the two always match.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from dataclasses import dataclass
from pathlib import Path

import biom
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

_BASES = np.frombuffer(b"ACGT", dtype=np.uint8)
_CHUNK = 4096  # samples per generation chunk (fixed, so results do not depend on memory settings)
_DATE = _dt.datetime(2020, 1, 1)  # fixed BIOM creation date: byte-identical files
BODY_SITES = ("gut", "oral", "skin")
# Seed streams
_TREE, _SEQ, _TRAIT, _SAMPLE, _PILOT, _META, _TEMPERATURE = range(7)


@dataclass
class SyntheticDataset:
    """A generated dataset; `table` feature IDs are the sequences and the tree's tip names."""

    table: biom.Table
    tree_newick: str
    metadata: pd.DataFrame  # indexed by sample_id: ph, body_site, subject
    latent: np.ndarray  # [n_samples, n_gradients] latent gradient positions
    seed: int

    @property
    def sequences(self) -> list[str]:
        return [str(f) for f in self.table.ids(axis="observation")]

    @property
    def sample_ids(self) -> list[str]:
        return [str(s) for s in self.table.ids(axis="sample")]


def _rng(seed: int, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *more])


def _yule_tree(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(parent, branch_length) of a rooted binary tree; tips 0..n-1, internal nodes n..2n-2, root 2n-2.

    Parents always have larger indices than their children. Yule process by random joining backwards
    in time: while k lineages exist the waiting time is Exp(k). Height normalised to 1.
    """
    n_nodes = 2 * n - 1
    parent = np.full(n_nodes, -1, dtype=np.int64)
    height = np.zeros(n_nodes)
    if n == 1:
        return parent, np.zeros(1)
    active = np.arange(n, dtype=np.int64)
    k = n
    waits = rng.exponential(1.0, size=n - 1) / np.arange(n, 1, -1)
    picks = rng.random((n - 1, 2))
    t = 0.0
    for step, new in enumerate(range(n, n_nodes)):
        t += waits[step]
        i = int(picks[step, 0] * k)
        j = int(picks[step, 1] * (k - 1))
        j += j >= i
        a, b = active[i], active[j]
        parent[a] = parent[b] = new
        height[new] = t
        lo, hi = min(i, j), max(i, j)
        active[lo] = new
        active[hi] = active[k - 1]
        k -= 1
    height /= height[-1]
    blen = np.zeros(n_nodes)
    blen[:-1] = height[parent[:-1]] - height[:-1]
    return parent, blen


def _evolve(
    parent: np.ndarray, blen: np.ndarray, n_tips: int, length: int, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Sequences (uint8 codes 0..3) [n_nodes, length] evolved from a random root along the tree."""
    n_nodes = parent.size
    seqs = np.empty((n_nodes, length), dtype=np.uint8)
    seqs[-1] = rng.integers(0, 4, size=length)
    site_rate = rng.gamma(0.5, 2.0, size=length)
    cdf = np.cumsum(site_rate) / site_rate.sum()
    n_mut = rng.poisson(rate * blen * length)
    total = int(n_mut.sum())
    pos_all = np.minimum(np.searchsorted(cdf, rng.random(total)), length - 1)
    shift_all = rng.integers(1, 4, size=total).astype(np.uint8)
    ends = np.cumsum(n_mut)
    for v in range(n_nodes - 2, -1, -1):  # parents before children
        seqs[v] = seqs[parent[v]]
        lo, hi = ends[v] - n_mut[v], ends[v]
        if hi > lo:
            p = pos_all[lo:hi]
            seqs[v, p] = (seqs[v, p] + shift_all[lo:hi]) % 4
    return seqs[:n_tips]


def _tip_sequences(codes: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Truncated tip sequences as strings, made unique by extra substitutions where needed."""
    n = codes.shape[0]
    for _ in range(1000):
        seqs = [_BASES[codes[i, : lengths[i]]].tobytes().decode() for i in range(n)]
        seen: dict[str, int] = {}
        dup = []
        for i, s in enumerate(seqs):
            if s in seen:
                dup.append(i)
            else:
                seen[s] = i
        if not dup:
            return seqs
        for i in dup:
            p = rng.integers(0, lengths[i])
            codes[i, p] = (codes[i, p] + rng.integers(1, 4)) % 4
    raise RuntimeError("could not make the synthetic sequences unique")


def _brownian(parent: np.ndarray, blen: np.ndarray, dims: int, rng: np.random.Generator) -> np.ndarray:
    """Brownian-motion traits [n_nodes, dims] along the tree (root = 0)."""
    steps = rng.standard_normal((parent.size, dims)) * np.sqrt(blen)[:, None]
    x = np.zeros((parent.size, dims))
    for v in range(parent.size - 2, -1, -1):
        x[v] = x[parent[v]] + steps[v]
    return x


def _newick(parent: np.ndarray, blen: np.ndarray, names: list[str], keep: np.ndarray) -> str:
    """Newick of the tree restricted to tips with `keep`; unary nodes are collapsed (lengths summed)."""
    n_nodes = parent.size
    n_tips = len(names)
    kept_below = np.zeros(n_nodes, dtype=np.int64)
    kept_below[:n_tips] = keep
    n_kept_children = np.zeros(n_nodes, dtype=np.int64)
    for v in range(n_nodes - 1):  # children before parents
        if kept_below[v]:
            kept_below[parent[v]] += kept_below[v]
            n_kept_children[parent[v]] += 1
    # Walk down: anc = nearest branching kept ancestor, acc = accumulated branch length to it.
    anc = np.full(n_nodes, -1, dtype=np.int64)
    acc = np.zeros(n_nodes)
    node = np.zeros(n_nodes, dtype=bool)  # kept in the output tree
    root = -1
    for v in range(n_nodes - 1, -1, -1):
        if kept_below[v] == 0:
            continue
        if v != n_nodes - 1:
            p = parent[v]
            if node[p]:
                anc[v], acc[v] = p, blen[v]
            else:  # parent collapsed (unary)
                anc[v], acc[v] = anc[p], acc[p] + blen[v]
        if v < n_tips or n_kept_children[v] >= 2:
            node[v] = True
            if anc[v] < 0:
                root = v
    children: dict[int, list[int]] = {}
    for v in np.flatnonzero(node):
        if anc[v] >= 0:
            children.setdefault(int(anc[v]), []).append(int(v))
    text: dict[int, str] = {}
    for v in np.flatnonzero(node):  # ascending: children before parents
        v = int(v)
        s = names[v] if v < n_tips else "(" + ",".join(text.pop(c) for c in children[v]) + ")"
        text[v] = s if v == root else f"{s}:{acc[v]:.8g}"
    return text[root] + ";\n"


def make_dataset(
    n_samples: int,
    n_features: int = 500,
    seed: int = 0,
    n_gradients: int = 3,
    min_len: int = 100,
    max_len: int = 150,
    substitution_rate: float = 0.2,
    richness: int = 120,
    mean_depth: float = 8000.0,
    strength: float = 1.5,
    n_subjects: int | None = None,
    missing_fraction: float = 0.02,
) -> SyntheticDataset:
    """Generate a dataset of `n_samples` samples over `n_features` ASVs (see the module docstring)."""
    if n_samples < 1 or n_features < 2:
        raise ValueError("need n_samples >= 1 and n_features >= 2")
    if not 1 <= min_len <= max_len:
        raise ValueError("need 1 <= min_len <= max_len")
    n_subjects = n_subjects or max(2, n_samples // 4)
    k = n_gradients

    # Tree and sequences.
    parent, blen = _yule_tree(n_features, _rng(seed, _TREE))
    rng_seq = _rng(seed, _SEQ)
    codes = _evolve(parent, blen, n_features, max_len, substitution_rate, rng_seq)
    lengths = rng_seq.integers(min_len, max_len + 1, size=n_features)
    seqs = _tip_sequences(codes, lengths, rng_seq)

    # Feature traits: baseline abundance and gradient responses (phylogenetic + feature noise).
    rng_t = _rng(seed, _TRAIT)
    traits = _brownian(parent, blen, k + 1, rng_t)[:n_features]
    traits = (traits - traits.mean(0)) / np.maximum(traits.std(0), 1e-12)
    noise = rng_t.standard_normal((n_features, k + 1))
    traits = np.sqrt(0.7) * traits + np.sqrt(0.3) * noise
    baseline = (1.5 * traits[:, 0]).astype(np.float32)
    response = (strength * traits[:, 1:] / np.sqrt(k)).astype(np.float32)  # [F, k]

    # Latent positions: subject effect + within-subject noise (unit variance overall).
    rng_m = _rng(seed, _META)
    subject = rng_m.integers(0, n_subjects, size=n_samples)
    u = rng_m.standard_normal((n_subjects, k))
    z = np.sqrt(0.7) * u[subject] + np.sqrt(0.3) * rng_m.standard_normal((n_samples, k))
    depth = np.exp(rng_m.normal(np.log(mean_depth), 0.5, size=n_samples))
    shallow = rng_m.random(n_samples) < 0.03
    depth[shallow] = np.exp(rng_m.normal(np.log(mean_depth / 20), 0.5, size=int(shallow.sum())))
    depth = np.maximum(np.round(depth), 50.0)

    # Presence threshold from a fixed pilot (mean richness = `richness`), independent of n_samples.
    rng_p = _rng(seed, _PILOT)
    eta_p = baseline + rng_p.standard_normal((256, k)).astype(np.float32) @ response.T
    target = min(1.0, richness / n_features)
    lo, hi = float(eta_p.min()) - 20.0, float(eta_p.max()) + 20.0
    for _ in range(60):  # bisection: mean presence probability is decreasing in tau
        tau = 0.5 * (lo + hi)
        if (1.0 / (1.0 + np.exp(tau - eta_p))).mean() > target:
            lo = tau
        else:
            hi = tau

    rows, cols, vals = [], [], []
    z32 = z.astype(np.float32)
    for ci, start in enumerate(range(0, n_samples, _CHUNK)):
        stop = min(n_samples, start + _CHUNK)
        m = stop - start
        rng_c = _rng(seed, _SAMPLE, ci)
        eta = z32[start:stop] @ response.T
        eta += baseline
        # ASV present with probability sigmoid(eta - tau) (logistic threshold model); top ASV always present.
        present = rng_c.random(eta.shape, dtype=np.float32) < 1.0 / (1.0 + np.exp(tau - eta))
        present[np.arange(m), np.argmax(eta, axis=1)] = True
        r, c = np.nonzero(present)
        logw = eta[r, c].astype(np.float64) + rng_c.standard_normal(r.size)
        w = np.exp(logw - logw.max())
        p = w / np.bincount(r, weights=w, minlength=m)[r]
        counts = rng_c.poisson(depth[start + r] * p)
        empty = np.bincount(r, weights=counts, minlength=m) == 0
        for s in np.flatnonzero(empty):  # rare: give an empty sample one read on its most abundant ASV
            sel = np.flatnonzero(r == s)
            counts[sel[np.argmax(p[sel])]] = 1
        nz = counts > 0
        rows.append(r[nz] + start)
        cols.append(c[nz])
        vals.append(counts[nz].astype(np.float64))
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    v = np.concatenate(vals)

    observed = np.bincount(c, minlength=n_features) > 0
    new_index = np.cumsum(observed) - 1
    kept = np.flatnonzero(observed)
    mat = sp.csr_matrix((v, (new_index[c], r)), shape=(kept.size, n_samples))
    width = len(str(n_samples - 1))
    sample_ids = [f"S{i:0{width}d}" for i in range(n_samples)]
    kept_seqs = [seqs[i] for i in kept]
    table = biom.Table(mat, kept_seqs, sample_ids, create_date=_DATE.isoformat(), generated_by="aam.data.synthetic")
    tree = _newick(parent, blen, seqs, observed)

    # Metadata targets driven by the latent gradients.
    ph = 6.8 + 0.6 * z[:, 0] - 0.3 * z[:, 1 % k] + rng_m.normal(0.0, 0.25, size=n_samples)
    angles = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
    dirs = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # 3 directions in the (z1, z2) plane
    plane = np.stack([z[:, 1 % k], z[:, 2 % k]], axis=1)
    site_score = plane @ dirs.T + rng_m.gumbel(0.0, 0.3, size=(n_samples, 3))
    site = np.array(BODY_SITES, dtype=object)[np.argmax(site_score, axis=1)]
    ph_text = np.array([f"{x:.2f}" for x in ph], dtype=object)
    ph_text[rng_m.random(n_samples) < missing_fraction] = "not provided"
    site[rng_m.random(n_samples) < missing_fraction] = "not provided"
    # temperature has its own random stream, so adding it left every other value of a seed unchanged
    rng_temp = _rng(seed, _TEMPERATURE)
    temperature = 30.0 + 3.0 * z[:, 2 % k] + 1.5 * z[:, 0] + rng_temp.normal(0.0, 1.0, size=n_samples)
    temp_text = np.array([f"{x:.1f}" for x in temperature], dtype=object)
    temp_text[rng_temp.random(n_samples) < missing_fraction] = "not provided"
    width_s = len(str(n_subjects - 1))
    md = pd.DataFrame(
        {"ph": ph_text, "temperature": temp_text, "body_site": site, "subject": [f"subj{s:0{width_s}d}" for s in subject]},
        index=pd.Index(sample_ids, name="sample_id"),
    )
    return SyntheticDataset(table=table, tree_newick=tree, metadata=md, latent=z, seed=seed)


def write_dataset(ds: SyntheticDataset, out_dir: str | Path) -> dict[str, Path]:
    """Write table.biom (HDF5), tree.nwk and metadata.tsv into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "table.biom", "tree": out / "tree.nwk", "metadata": out / "metadata.tsv"}
    with h5py.File(paths["table"], "w", track_order=False) as f:
        ds.table.to_hdf5(f, "aam.data.synthetic", creation_date=_DATE)
    paths["tree"].write_text(ds.tree_newick, encoding="utf-8")
    ds.metadata.to_csv(paths["metadata"], sep="\t", lineterminator="\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aam.data.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("--n-samples", type=int, required=True)
    ap.add_argument("--n-features", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output folder")
    args = ap.parse_args(argv)
    ds = make_dataset(args.n_samples, n_features=args.n_features, seed=args.seed)
    paths = write_dataset(ds, args.out)
    n_feat, n_samp = ds.table.shape
    print(f"wrote {n_samp} samples x {n_feat} ASVs: " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
