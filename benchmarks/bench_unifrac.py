"""UniFrac speed: native engine vs scikit-bio (whole tables) and on-the-fly batch targets.

    PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_unifrac.py --benchmark-enable -q \
        --benchmark-columns=mean,min,rounds

Environment (defaults keep a CPU run to a few minutes):
- AAM_BENCH_UNIFRAC_SIZES: generated whole-table sample counts (default "1000"; e.g. "1000,10000")
- AAM_BENCH_UNIFRAC_SKBIO: run scikit-bio too (default 1); on IBD it takes ~1.5 min, on 1,000 generated
  samples ~1 min; it is skipped above 1,000 samples
- AAM_BENCH_UNIFRAC_BATCH_N: samples of the generated table for batch targets (default 100000)
- AAM_BENCH_THREADS: OpenMP threads (default: all cores)
- AAM_BENCH_NEWICK_TIPS: tips of the generated tree for the Newick parsing benchmark (default 100000)
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import aam.ops.unifrac  # noqa: F401
from aam import native
from aam.ops.unifrac import TreeDistances, parse_newick, read_tree

U = sys.modules["aam.ops.unifrac"]
REPO = Path(__file__).resolve().parents[1]
IBD = Path(os.environ.get("AAM_SHARED_DATA", REPO.parent / "shared" / "data")) / "ibd-2538"
SIZES = [int(x) for x in os.environ.get("AAM_BENCH_UNIFRAC_SIZES", "1000").split(",") if x]
SKBIO = os.environ.get("AAM_BENCH_UNIFRAC_SKBIO", "1") == "1"
BATCH_N = int(os.environ.get("AAM_BENCH_UNIFRAC_BATCH_N", "100000"))
THREADS = int(os.environ.get("AAM_BENCH_THREADS", "0")) or None
NEWICK_TIPS = int(os.environ.get("AAM_BENCH_NEWICK_TIPS", "100000"))
SK_METRICS = {"unweighted": ("unweighted_unifrac", {}), "weighted_normalized": ("weighted_unifrac", {"normalized": True})}

pytestmark = pytest.mark.skipif(native.cpu_module() is None, reason="aam._C not built")


def generated(n_samples: int, n_tips: int = 2000, per_sample: int = 100, seed: int = 0):
    """A random binary tree on n_tips tips and a sparse table (about per_sample features per sample)."""
    import biom
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    nodes = [f"t{i}" for i in range(n_tips)]
    while len(nodes) > 1:
        i, j = sorted(rng.choice(len(nodes), size=2, replace=False), reverse=True)
        a, b = nodes.pop(i), nodes.pop(j)
        nodes.append(f"({a}:{rng.exponential(0.1):.5g},{b}:{rng.exponential(0.1):.5g})")
    newick = nodes[0] + ";"
    nnz = n_samples * per_sample
    # features drawn from a skewed distribution, like real communities
    feat = np.minimum((rng.pareto(1.0, nnz) * n_tips / 20).astype(np.int64), n_tips - 1)
    samp = np.repeat(np.arange(n_samples), per_sample)
    counts = rng.integers(1, 100, nnz).astype(np.float64)
    m = sp.coo_matrix((counts, (feat, samp)), shape=(n_tips, n_samples)).tocsr()
    m.sum_duplicates()
    table = biom.Table(m, [f"t{i}" for i in range(n_tips)], [f"s{i}" for i in range(n_samples)])
    return newick, table


def ibd():
    import biom

    if not IBD.is_dir():
        pytest.skip(f"real data not found at {IBD}")
    tree = read_tree(IBD / "tree.nwk")
    table = biom.load_table(str(IBD / "table.biom"))
    tips = tree.tip_index()
    table = table.filter([f for f in table.ids("observation") if f in tips], axis="observation", inplace=False)
    return (IBD / "tree.nwk").read_text(), tree, table


def skbio_beta(newick: str, table, metric: str) -> np.ndarray:
    import skbio
    from skbio.diversity import beta_diversity

    name, kw = SK_METRICS[metric]
    tree = skbio.TreeNode.read(io.StringIO(newick))
    return beta_diversity(name, table.matrix_data.T.toarray(), list(table.ids()),
                          taxa=list(table.ids("observation")), tree=tree, **kw).data


@pytest.mark.parametrize("metric", list(SK_METRICS))
def test_ibd_native(benchmark, metric):
    _, tree, table = ibd()
    benchmark.group = f"unifrac-ibd-{metric}"
    benchmark.extra_info.update(samples=table.shape[1], features=table.shape[0], threads=THREADS or "all")
    dm = benchmark.pedantic(U.unifrac, args=(table, tree, metric), kwargs={"threads": THREADS}, rounds=3,
                            iterations=1)
    assert dm.data.shape == (table.shape[1],) * 2


@pytest.mark.parametrize("metric", list(SK_METRICS))
def test_ibd_skbio(benchmark, metric):
    if not SKBIO:
        pytest.skip("AAM_BENCH_UNIFRAC_SKBIO=0")
    newick, tree, table = ibd()
    benchmark.group = f"unifrac-ibd-{metric}"
    benchmark.extra_info.update(samples=table.shape[1], features=table.shape[0])
    ref = benchmark.pedantic(skbio_beta, args=(newick, table, metric), rounds=1, iterations=1)
    assert np.abs(U.unifrac(table, tree, metric).data - ref).max() <= 1e-9  # identical results


def test_ibd_parse_tree(benchmark):
    if not IBD.is_dir():
        pytest.skip(f"real data not found at {IBD}")
    text = (IBD / "tree.nwk").read_bytes()
    benchmark.group = "newick-ibd"
    tree = benchmark(parse_newick, text)
    assert tree.n_tips == 9970


def balanced_newick(n_tips: int, seed: int = 0) -> str:
    """A random tree built level by level (no recursion), for parsing benchmarks."""
    rng = np.random.default_rng(seed)
    nodes = [f"t{i}:{x:.4f}" for i, x in enumerate(rng.random(n_tips))]
    while len(nodes) > 1:
        order = rng.permutation(len(nodes))
        nodes = [f"({nodes[order[i]]},{nodes[order[i + 1]]}):{rng.random():.3f}" if i + 1 < len(nodes)
                 else nodes[order[i]] for i in range(0, len(nodes), 2)]
    return nodes[0] + ";"


@pytest.mark.parametrize("reader", ["aam", "skbio"])
def test_parse_generated_tree(benchmark, reader):
    text = balanced_newick(NEWICK_TIPS)
    benchmark.group = f"newick-{NEWICK_TIPS}-tips"
    if reader == "aam":
        tree = benchmark.pedantic(parse_newick, args=(text.encode(),), rounds=3, iterations=1)
        assert tree.n_tips == NEWICK_TIPS
    else:
        if not SKBIO:
            pytest.skip("AAM_BENCH_UNIFRAC_SKBIO=0")
        import skbio

        benchmark.pedantic(lambda: skbio.TreeNode.read(io.StringIO(text)), rounds=1, iterations=1)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("metric", ["unweighted", "weighted_normalized"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_generated_native(benchmark, n, metric, dtype):
    newick, table = generated(n)
    tree = parse_newick(newick)
    benchmark.group = f"unifrac-generated-{n}-{metric}"
    benchmark.extra_info.update(samples=n, tips=tree.n_tips, threads=THREADS or "all")
    dm = benchmark.pedantic(U.unifrac, args=(table, tree, metric), kwargs={"threads": THREADS, "dtype": dtype},
                            rounds=1, iterations=1)
    assert dm.data.shape == (n, n)


@pytest.mark.parametrize("n", [s for s in SIZES if s <= 1000])
def test_generated_skbio(benchmark, n):
    if not SKBIO:
        pytest.skip("AAM_BENCH_UNIFRAC_SKBIO=0")
    newick, table = generated(n)
    benchmark.group = f"unifrac-generated-{n}-unweighted"
    ref = benchmark.pedantic(skbio_beta, args=(newick, table, "unweighted"), rounds=1, iterations=1)
    assert np.abs(U.unifrac(table, newick, "unweighted").data - ref).max() <= 1e-9


@pytest.fixture(scope="module")
def batch_source():
    newick, table = generated(BATCH_N, n_tips=5000, per_sample=60, seed=1)
    start = time.perf_counter()
    td = TreeDistances(table, newick, "unweighted", threads=THREADS)
    return td, time.perf_counter() - start


@pytest.mark.parametrize("batch", [32, 256])
@pytest.mark.parametrize("metric", ["unweighted", "weighted_normalized"])
def test_batch_targets(benchmark, batch_source, batch, metric):
    td, build_s = batch_source
    td.metric = metric
    rng = np.random.default_rng(batch)
    benchmark.group = f"unifrac-batch-{metric}"
    benchmark.extra_info.update(samples=len(td), state_mb=round(td.nbytes / 1e6, 1), build_s=round(build_s, 2))

    def one_batch():
        return td.pairs_by_index(rng.choice(len(td), size=batch, replace=False))

    out = benchmark(one_batch)
    assert out.shape == (batch, batch)
