"""Planned memory: `--auto-batch-size` under a memory budget against fixed batch sizes tried by hand, and
fine-tuning with a frozen encoder, cached ASV embeddings against encoding every batch.

Data shaped like real amplicon tables: ASVs per sample log-normal (median ~50, capped at 400), 100-150 nt,
skewed abundances (the generator's). Model: D=128, 4 heads, 4 layers per stack. Each configuration runs in a
fresh process (its peak resident set is the process's, VmHWM) and trains one epoch over the same samples.

    PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_memory.py --benchmark-enable -q -s \
        --benchmark-json=benchmarks/results/<dir>/memory.json

Environment: AAM_BENCH_SAMPLES (96), AAM_BENCH_BUDGET_GB (4), AAM_BENCH_FIXED (batch sizes tried by hand,
"4,8,16,32"), AAM_BENCH_DEVICE (cpu|cuda; default cuda if available).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

import aam

SAMPLES = int(os.environ.get("AAM_BENCH_SAMPLES", "96"))
BUDGET_GB = float(os.environ.get("AAM_BENCH_BUDGET_GB", "4"))
FIXED = [int(x) for x in os.environ.get("AAM_BENCH_FIXED", "4,8,16,32").split(",")]
DEVICE = os.environ.get("AAM_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")

RUN = textwrap.dedent("""
    import functools, json, sys, tempfile
    import biom, numpy as np, scipy.sparse as sp, torch
    from aam.data.dataset import SampleDataset, collate
    from aam.data.synthetic import make_dataset
    from aam.data.tokenizer import tokenize
    from aam.models import ModelConfig, build_model
    from aam.training.config import TrainConfig
    from aam.training.losses import LossConfig, MultiTaskLoss
    from aam.training.trainer import Trainer

    args = json.loads(sys.argv[1])
    torch.manual_seed(0)
    ds = make_dataset(args["samples"], n_features=3000, seed=11, min_len=100, max_len=150, richness=400)
    m = sp.csc_matrix(ds.table.matrix_data)
    rng = np.random.default_rng(0)
    keep = np.clip(np.round(np.exp(rng.normal(np.log(50), 0.8, size=m.shape[1]))), 10, 400).astype(int)
    rows, cols, vals = [], [], []
    for j in range(m.shape[1]):  # each sample keeps its `keep[j]` most abundant ASVs
        lo, hi = m.indptr[j], m.indptr[j + 1]
        top = np.argsort(-m.data[lo:hi], kind="stable")[: keep[j]]
        rows.append(m.indices[lo:hi][top]); vals.append(m.data[lo:hi][top]); cols.append(np.full(top.size, j))
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=m.shape)
    table = biom.Table(m, ds.table.ids(axis="observation"), ds.table.ids())
    tokens, _, _ = tokenize(ds.sequences, 150)
    data = SampleDataset(table, tokens, 512)
    ids = ds.sample_ids
    d = rng.random((len(ids), len(ids))); d = (d + d.T) / 2; np.fill_diagonal(d, 0)
    index = {s: i for i, s in enumerate(ids)}

    class Dist:
        def pairs(self, s):
            idx = [index[x] for x in s]
            return d[np.ix_(idx, idx)]

    kind = "predictor" if args["task"] == "finetune" else "encoder"
    cfg = ModelConfig(kind=kind, embedding_dim=128, asv_heads=4, asv_layers=4, sample_heads=4, sample_layers=4,
                      encoder_heads=4, encoder_layers=4, count_heads=4, target_heads=4, target_layers=4,
                      token_limit=512, max_bp=150, dropout=0.0)
    model = build_model(cfg)
    if kind == "predictor":
        model.freeze_base()
        data.targets = rng.normal(size=len(ids)).astype(np.float32)
    loss = MultiTaskLoss(LossConfig(nuc_weight=0.0 if kind == "predictor" else 1.0))
    tc = TrainConfig(epochs=1, progress=False, tensorboard=False, **args["config"])
    trainer = Trainer(model, loss, data, None, functools.partial(collate, distances=Dist()), tc,
                      torch.device(args["device"]), tempfile.mkdtemp(), {"kind": "pretrain", "model_config":
                      cfg.to_dict(), "preprocessing": {}}, task="regression" if kind == "predictor" else "pretrain")
    if not args["cache"]:
        trainer.cache_asv = False  # encode every batch's ASVs with the frozen encoder (the path before the cache)
    row = trainer.fit()[0]
    n_asvs = np.diff(sp.csc_matrix(table.matrix_data).indptr)
    out = {"samples_per_s": row["train_samples_per_s"], "batch": trainer.plan.batch_size or len(data) / trainer.batches_per_epoch,
           "batches": trainer.batches_per_epoch, "peak_rss_mb": next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")) / 1024,
           "asvs_per_sample": {"median": float(np.median(n_asvs)), "max": int(n_asvs.max())}}
    if args["device"] == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out))
""")


def run(task: str, config: dict, cache: bool = True) -> dict:
    env = dict(os.environ, AAM_NO_PROGRESS="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(aam.__file__)), os.environ.get("PYTHONPATH", "")]))
    args = {"samples": SAMPLES, "task": task, "config": config, "cache": cache, "device": DEVICE}
    res = subprocess.run([sys.executable, "-c", RUN, json.dumps(args)], capture_output=True, text=True, env=env,
                         timeout=3600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])


def _record(benchmark, stats: dict) -> None:
    benchmark.extra_info.update(stats)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_auto_batch_size_vs_fixed_batches_by_hand(benchmark):
    """One epoch each: every fixed size in AAM_BENCH_FIXED, then --auto-batch-size and budget-packed batches
    (--max-memory-gb alone) under the budget."""
    results = {f"fixed_{b}": run("pretrain", {"batch_size": b}) for b in FIXED}
    results["auto"] = run("pretrain", {"auto_batch_size": True, "max_memory_gb": BUDGET_GB})
    results["budget"] = run("pretrain", {"max_memory_gb": BUDGET_GB})
    peak_key = "cuda_peak_mb" if DEVICE == "cuda" else "peak_rss_mb"
    under = {k: v for k, v in results.items() if k.startswith("fixed") and v[peak_key] <= BUDGET_GB * 1024}
    best = max(under, key=lambda k: under[k]["samples_per_s"]) if under else None
    summary = {"budget_gb": BUDGET_GB, "device": DEVICE, "results": results, "best_fixed_under_budget": best}
    if best:
        for mode in ("auto", "budget"):
            summary[f"{mode}_vs_best_fixed_speed"] = results[mode]["samples_per_s"] / results[best]["samples_per_s"]
    _record(benchmark, summary)
    print("\n" + json.dumps(summary, indent=1))
    for mode in ("auto", "budget"):  # the plans held their budget
        assert results[mode][peak_key] <= BUDGET_GB * 1024, (mode, results[mode])


def test_frozen_encoder_cached_vs_uncached(benchmark):
    """Fine-tuning with --freeze-base for one epoch: ASV embeddings cached once per run vs encoded per batch."""
    cached = run("finetune", {"batch_size": 8}, cache=True)
    uncached = run("finetune", {"batch_size": 8}, cache=False)
    summary = {"device": DEVICE, "cached": cached, "uncached": uncached,
               "speedup": cached["samples_per_s"] / uncached["samples_per_s"]}
    _record(benchmark, summary)
    print("\n" + json.dumps(summary, indent=1))
