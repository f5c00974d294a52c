"""Pretraining step throughput (samples/s) and peak memory on generated data.

Config (DESIGN.md targets compare it with the reference at the same settings): D=128, 4 heads, 4 layers per
stack, token_limit 64, batch 8, 150-bp ASVs, UniFrac + masked-nucleotide loss, AdamW step.

    PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_pretrain.py --benchmark-enable -q -s

Environment: AAM_BENCH_DEVICE (cpu|cuda, default cuda if available), AAM_BENCH_KERNELS (default auto),
AAM_BENCH_BATCH (8), AAM_BENCH_STEPS (memory run, 5), AAM_BENCH_TOKEN_LIMIT (64), AAM_BENCH_PACKED (1: transformers
run on valid tokens with varlen attention where a varlen kernel exists; 0: padded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import aam

DEVICE = os.environ.get("AAM_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
KERNELS = os.environ.get("AAM_BENCH_KERNELS", "auto")
BATCH = int(os.environ.get("AAM_BENCH_BATCH", "8"))
STEPS = int(os.environ.get("AAM_BENCH_STEPS", "5"))
TOKEN_LIMIT = int(os.environ.get("AAM_BENCH_TOKEN_LIMIT", "64"))
PACKED = os.environ.get("AAM_BENCH_PACKED", "1") == "1"

SETUP = textwrap.dedent(f"""
    import numpy as np, torch
    from aam.data.synthetic import make_dataset
    from aam.data.tokenizer import tokenize
    from aam.data.dataset import SampleDataset, collate
    from aam.models import ModelConfig, build_model
    from aam.training.losses import LossConfig, MultiTaskLoss, mask_nucleotides
    from aam.training.optim import make_optimizer

    torch.manual_seed(0)
    ds = make_dataset({BATCH * 4}, n_features=400, seed=1, min_len=140, max_len=150, richness=100)
    seqs = ds.sequences
    tokens, _, _ = tokenize(seqs, 150)
    data = SampleDataset(ds.table, tokens, {TOKEN_LIMIT})
    ids = ds.sample_ids
    rng = np.random.default_rng(0)
    d = rng.random((len(ids), len(ids))); d = (d + d.T) / 2; np.fill_diagonal(d, 0)

    class Dist:
        def pairs(self, sample_ids):
            idx = [ids.index(s) for s in sample_ids]
            return d[np.ix_(idx, idx)]

    batches = [collate([data[i] for i in range(k, k + {BATCH})], Dist()) for k in range(0, len(ids) - {BATCH} + 1, {BATCH})]
    device = torch.device("{DEVICE}")
    cfg = ModelConfig(embedding_dim=128, asv_heads=4, asv_layers=4, sample_heads=4, sample_layers=4, encoder_heads=4,
                      encoder_layers=4, token_limit={TOKEN_LIMIT}, max_bp=150, dropout=0.0, kernels="{KERNELS}",
                      packed_attention={PACKED})
    model = build_model(cfg).to(device)
    loss_fn = MultiTaskLoss(LossConfig(kernels="{KERNELS}"))
    opt = make_optimizer(model, 1e-4)

    def step(b):
        b = {{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}}
        rows = b["tokens"][torch.randperm(b["tokens"].shape[0], device=device)[: max(1, b["tokens"].shape[0] // 4)]]
        masked, mask = mask_nucleotides(rows, 0.15)
        b["tokens_original"], b["nuc_mask"] = rows, mask
        out = model(tokens=b["tokens"], asv_index=b["asv_index"], offsets=b["offsets"], counts=b["counts"],
                    nuc_tokens=masked)
        loss = loss_fn(out, b)["total"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
""")

MEMORY = SETUP + textwrap.dedent(f"""
    import json
    step(batches[0])
    if device.type == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    for i in range({STEPS}):
        step(batches[i % len(batches)])
    out = {{"max_rss_mb": next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")) / 1024}}
    if device.type == "cuda":
        torch.cuda.synchronize(); out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def env():
    ns: dict = {}
    exec(SETUP, ns)  # noqa: S102 - the same code the memory subprocess runs
    return ns


def test_pretrain_step_throughput(benchmark, env):
    step, batches = env["step"], env["batches"]
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    step(batches[0])
    it = iter(range(10**9))

    def run():
        step(batches[next(it) % len(batches)])
        sync()

    benchmark.pedantic(run, rounds=5 if DEVICE == "cpu" else 20, iterations=1, warmup_rounds=1)
    sps = BATCH / benchmark.stats.stats.mean
    u = [b["tokens"].shape[0] for b in batches]
    benchmark.extra_info.update({"samples_per_s": sps, "device": DEVICE, "kernels": KERNELS, "batch": BATCH,
                                 "unique_asvs_per_batch": sum(u) / len(u), "packed": PACKED,
                                 "token_limit": TOKEN_LIMIT})
    print(f"\npretrain step: {sps:.2f} samples/s ({DEVICE}, kernels={KERNELS}, packed={PACKED}, batch {BATCH}, "
          f"{sum(u) / len(u):.0f} unique ASVs/batch)")


def test_pretrain_peak_memory(benchmark):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(aam.__file__)),
                                                        os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", MEMORY], capture_output=True, text=True, env=env, timeout=1200)
    assert res.returncode == 0, res.stderr[-2000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    stats = json.loads(line[len("RESULT "):])
    benchmark.extra_info.update(stats)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\npretrain peak memory: {stats} ({time.perf_counter() - t0:.0f} s for {STEPS} steps + setup)")
