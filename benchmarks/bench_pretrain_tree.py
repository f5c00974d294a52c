"""Pretraining from a tree (`aam pretrain --tree`): memory of the distance source and per-batch target time.

With --tree the batch targets come from TreeDistances (per-sample branch state, O(N) memory) instead of a
dense N x N matrix (N^2 * 8 bytes as float64). This reports the state's bytes next to N^2 * 8, times the
[B, B] target block of a batch (what the collate function calls, by sample ID) at B = 32 and 256, and runs
a few pretraining steps in a subprocess at each of a few table sizes to show that peak RSS follows the
table, not N^2.

    PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_pretrain_tree.py --benchmark-enable -q -s \
        --benchmark-columns=mean,min,rounds

Environment (the defaults keep a CPU run to about a minute):
- AAM_BENCH_TREE_N: samples of the generated table for the memory and batch-time tests (default 10000;
  the issue's size is 100000)
- AAM_BENCH_TREE_RSS_SIZES: sample counts of the pretraining peak-RSS runs (default "1000,10000";
  e.g. "10000,100000")
- AAM_BENCH_TREE_METRIC: UniFrac metric (default unweighted)

Measured (2 shared CPU cores, AAM_BENCH_TREE_N=100000 AAM_BENCH_TREE_RSS_SIZES=10000,100000): state 451 MiB
(4.7 kB/sample, built in 4.5 s) vs 76,294 MiB dense; 0.44-0.49 ms per batch of 32, 25-31 ms per batch of 256;
peak RSS of 5 steps 1,958 MiB at 10^4 samples vs 2,058 MiB at 10^5 (the model's activations dominate).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import aam
from aam import native

N = int(os.environ.get("AAM_BENCH_TREE_N", "10000"))
RSS_SIZES = [int(x) for x in os.environ.get("AAM_BENCH_TREE_RSS_SIZES", "1000,10000").split(",") if x]
METRIC = os.environ.get("AAM_BENCH_TREE_METRIC", "unweighted")
SRC = str(Path(aam.__file__).resolve().parents[1])  # children import the same aam as this process

pytestmark = pytest.mark.skipif(native.cpu_module() is None, reason="aam._C not built")

# Shared by this process and the RSS subprocess: a random tree whose tips are ASV sequences, and a sparse
# table of `per_sample` ASVs per sample drawn from a skewed distribution (like real communities).
GENERATOR = textwrap.dedent("""
    import numpy as np

    def generated(n_samples, n_tips=2000, per_sample=60, seed=0):
        import biom
        import scipy.sparse as sp

        rng = np.random.default_rng(seed)
        seqs = sorted({"".join(rng.choice(list("ACGT"), size=int(rng.integers(120, 151)))) for _ in range(n_tips)})
        n_tips = len(seqs)
        nodes = list(seqs)
        while len(nodes) > 1:
            i, j = sorted(rng.choice(len(nodes), size=2, replace=False), reverse=True)
            a, b = nodes.pop(i), nodes.pop(j)
            nodes.append(f"({a}:{rng.exponential(0.1):.5g},{b}:{rng.exponential(0.1):.5g})")
        feat = np.minimum((rng.pareto(1.0, n_samples * per_sample) * n_tips / 20).astype(np.int64), n_tips - 1)
        samp = np.repeat(np.arange(n_samples), per_sample)
        counts = rng.integers(1, 100, n_samples * per_sample).astype(np.float64)
        m = sp.coo_matrix((counts, (feat, samp)), shape=(n_tips, n_samples)).tocsr()
        m.sum_duplicates()
        return nodes[0] + ";", biom.Table(m, seqs, [f"s{i}" for i in range(n_samples)])
""")
_NS: dict = {}
exec(GENERATOR, _NS)  # noqa: S102 - the same generator the subprocess runs
generated = _NS["generated"]

RSS_SCRIPT = GENERATOR + textwrap.dedent("""
    import json, sys, time
    import torch
    from aam.data.dataset import SampleDataset, collate
    from aam.data.tokenizer import tokenize
    from aam.ops.unifrac import TreeDistances
    from aam.models import ModelConfig, build_model
    from aam.training.losses import LossConfig, MultiTaskLoss, mask_nucleotides
    from aam.training.optim import make_optimizer

    def rss_mb():  # current resident set
        with open("/proc/self/status") as fh:
            return next(int(x.split()[1]) for x in fh if x.startswith("VmRSS:")) / 1024

    def peak_mb():  # VmHWM: ru_maxrss would carry the forking parent's resident set over through exec
        with open("/proc/self/status") as fh:
            return next(int(x.split()[1]) for x in fh if x.startswith("VmHWM:")) / 1024

    n, metric, steps, batch = int(sys.argv[1]), sys.argv[2], 5, 16
    torch.manual_seed(0)
    base = rss_mb()
    newick, table = generated(n)
    tokens, _, _ = tokenize([str(f) for f in table.ids("observation")], 150)
    data = SampleDataset(table, tokens, 32)
    t0 = time.perf_counter()
    td = TreeDistances(table, newick, metric, threads=1)
    build_s = time.perf_counter() - t0
    after_data = rss_mb()
    cfg = ModelConfig(embedding_dim=32, asv_heads=2, asv_layers=1, sample_heads=2, sample_layers=1, encoder_heads=2,
                      encoder_layers=1, token_limit=32, max_bp=150, dropout=0.0)
    model = build_model(cfg)
    loss_fn = MultiTaskLoss(LossConfig())
    opt = make_optimizer(model, 1e-4)
    rng = np.random.default_rng(0)
    t_targets = 0.0
    for _ in range(steps):
        items = [data[int(i)] for i in rng.choice(n, size=batch, replace=False)]
        t1 = time.perf_counter()
        b = collate(items, td)
        t_targets += time.perf_counter() - t1
        rows = b["tokens"][: max(1, b["tokens"].shape[0] // 4)]
        masked, mask = mask_nucleotides(rows, 0.15)
        b["tokens_original"], b["nuc_mask"] = rows, mask
        out = model(tokens=b["tokens"], asv_index=b["asv_index"], offsets=b["offsets"], counts=b["counts"],
                    nuc_tokens=masked)
        loss_fn(out, b)["total"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    print("RESULT " + json.dumps({"n": n, "base_rss_mb": base, "data_rss_mb": after_data, "peak_rss_mb": peak_mb(),
                                  "state_mb": td.nbytes / 2**20, "table_nnz": int(table.nnz),
                                  "dense_float64_mb": n * n * 8 / 2**20, "build_s": build_s,
                                  "collate_ms_per_step": 1000 * t_targets / steps}))
""")


@pytest.fixture(scope="module")
def source():
    from aam.ops.unifrac import TreeDistances

    newick, table = generated(N)
    start = time.perf_counter()
    td = TreeDistances(table, newick, METRIC)
    return td, table, time.perf_counter() - start


def test_distance_source_memory(benchmark, source):
    td, table, build_s = source
    dense = len(td) ** 2 * 8
    benchmark.group = f"pretrain-tree-{len(td)}-memory"
    benchmark.extra_info.update(samples=len(td), state_bytes=td.nbytes, dense_float64_bytes=dense,
                                table_nnz=int(table.nnz), build_s=round(build_s, 3))
    benchmark.pedantic(lambda: td.nbytes, rounds=1, iterations=1)
    print(f"\n{len(td)} samples ({table.nnz} table entries, {METRIC}): TreeDistances state {td.nbytes / 2**20:.1f} "
          f"MiB ({td.nbytes / len(td):.0f} B/sample, built in {build_s:.2f} s) vs dense N^2*8 "
          f"{dense / 2**20:.1f} MiB ({dense / td.nbytes:.0f}x)")
    assert td.nbytes < dense


@pytest.mark.parametrize("batch", [32, 256])
def test_batch_target_time(benchmark, source, batch):
    td, _, _ = source
    rng = np.random.default_rng(batch)
    benchmark.group = f"pretrain-tree-{len(td)}-batch-targets"
    benchmark.extra_info.update(samples=len(td), batch=batch, metric=METRIC, threads=td.threads or "all")

    def one_batch():  # what the collate function does: the [B, B] block of a batch, by sample ID
        return td.pairs([td.ids[i] for i in rng.choice(len(td), size=batch, replace=False)])

    out = benchmark(one_batch)
    assert out.shape == (batch, batch)
    print(f"\nbatch {batch}: {benchmark.stats.stats.mean * 1e3:.3f} ms per [B, B] target block ({len(td)} samples)")


@pytest.mark.parametrize("n", RSS_SIZES)
def test_pretrain_steps_peak_rss(benchmark, n):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(n), METRIC], capture_output=True, text=True,
                         env=env, timeout=1800)
    assert res.returncode == 0, res.stderr[-2000:]
    stats = json.loads(next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    benchmark.group = "pretrain-tree-peak-rss"
    benchmark.extra_info.update(stats)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\n{n} samples: peak RSS {stats['peak_rss_mb']:.0f} MiB after 5 steps (RSS with torch imported "
          f"{stats['base_rss_mb']:.0f}, + table, dataset, distance state {stats['data_rss_mb']:.0f}; state "
          f"{stats['state_mb']:.1f} MiB; a dense float64 matrix would be {stats['dense_float64_mb']:.0f} MiB); "
          f"collate {stats['collate_ms_per_step']:.1f} ms/step; {time.perf_counter() - t0:.0f} s")
