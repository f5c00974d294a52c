"""Pairwise UniFrac loss fwd+bwd: every available backend against the torch reference users would write
(torch.cdist + mse over the upper triangle).

Run:   PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_pairwise_loss.py --benchmark-enable
Sizes: B in 256, 1024, 4096 (plus 16384 on GPU with AAM_BENCH_FULL=1) x D in 128, 256; override with
       AAM_BENCH_SIZES="256x128,4096x256". AAM_BENCH_DTYPE=float32|float16|bfloat16 (default float32).
Memory (extra_info["peak_bytes"]): on CUDA torch.cuda.max_memory_allocated over one fwd+bwd (inputs
excluded); on CPU, in a fresh child process (Linux), the peak RSS (VmHWM, reset through
/proc/self/clear_refs) over one fwd+bwd minus the RSS before it (inputs allocated before the
baseline); skipped with AAM_BENCH_MEMORY=0 or when --benchmark-disable.
extra_info also holds "speedup_vs_reference" (reference mean / backend mean, same B, D, device).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import aam.ops
from aam.ops import registry
from aam.ops.pairwise_loss import OP

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = getattr(torch, os.environ.get("AAM_BENCH_DTYPE", "float32"))
FULL = os.environ.get("AAM_BENCH_FULL", "") == "1"
MEASURE_MEMORY = os.environ.get("AAM_BENCH_MEMORY", "1") != "0"


def _sizes() -> list[tuple[int, int]]:
    if os.environ.get("AAM_BENCH_SIZES"):
        return [tuple(int(v) for v in s.split("x")) for s in os.environ["AAM_BENCH_SIZES"].split(",")]
    bs = [256, 1024, 4096] + ([16384] if FULL and DEVICE.type == "cuda" else [])
    return [(b, d) for b in bs for d in (128, 256)]


def reference_loss(emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """What a user writes without aam: cdist, then MSE over the pairs i<j."""
    b = emb.shape[0]
    d = torch.cdist(emb, emb)
    iu = torch.triu_indices(b, b, 1, device=emb.device)
    return torch.nn.functional.mse_loss(d[iu[0], iu[1]], target[iu[0], iu[1]])


def _backends() -> list[str]:
    req = registry.KernelRequest(DEVICE, DTYPE, batch=1024, dim=128)
    names = [name for name, reason in registry.status(OP, req) if reason is None]
    if DEVICE.type == "cpu":  # the Triton interpreter is a test tool, not a backend to time
        names = [n for n in names if n != "triton"]
    return ["reference"] + names


def _loss_fn(backend: str):
    if backend == "reference":
        return reference_loss
    return lambda e, t: aam.ops.pairwise_unifrac_loss(e, t, backend=backend)


def _inputs(b: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    emb = torch.randn(b, d, generator=g).to(DEVICE, DTYPE).requires_grad_(True)
    target = torch.rand(b, b, generator=g).to(DEVICE, DTYPE)
    return emb, target


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


_CHILD = r"""
import json, sys, torch
sys.path[:0] = {paths!r}
import bench_pairwise_loss as bp

def status_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

emb, target = bp._inputs({b}, {d})
fn = bp._loss_fn({backend!r})
fn(*bp._inputs(8, 4)).backward()  # load kernels, warm caches
with open("/proc/self/clear_refs", "w") as f:  # reset the peak RSS (VmHWM) to the current RSS
    f.write("5")
before = status_kib("VmRSS")
fn(emb, target).backward()
after = status_kib("VmHWM")
print("PEAK", json.dumps((after - before) * 1024))
"""


def _cpu_peak_bytes(backend: str, b: int, d: int) -> int | None:
    here = str(Path(__file__).resolve().parent)
    pkg_root = str(Path(aam.__file__).resolve().parents[1])  # the same aam as this process
    code = _CHILD.format(paths=[here, pkg_root], b=b, d=d, backend=backend)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK "):
            return int(json.loads(line[5:]))
    return None


_REFERENCE_MEAN: dict[tuple[int, int], float] = {}
CASES = [(b, d, backend) for b, d in _sizes() for backend in _backends()]


@pytest.mark.parametrize("b,d,backend", CASES, ids=[f"B{b}-D{d}-{k}" for b, d, k in CASES])
def test_pairwise_loss_fwd_bwd(benchmark, b, d, backend):
    if backend == "math" and b > 4096 and DEVICE.type == "cpu":
        pytest.skip("math at this size is too slow on CPU")
    emb, target = _inputs(b, d)
    fn = _loss_fn(backend)

    def step():
        emb.grad = None
        fn(emb, target).backward()
        _sync()

    step()  # warm-up: kernel loading / compilation
    peak = None
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    elif MEASURE_MEMORY and not benchmark.disabled:
        peak = _cpu_peak_bytes(backend, b, d)
    rounds = 3 if b >= 4096 else 5
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
    mean = benchmark.stats.stats.mean if benchmark.stats else None
    info = {"backend": backend, "B": b, "D": d, "device": str(DEVICE), "dtype": str(DTYPE),
            "threads": torch.get_num_threads(), "peak_bytes": peak}
    if mean is not None:
        if backend == "reference":
            _REFERENCE_MEAN[(b, d)] = mean
        elif (b, d) in _REFERENCE_MEAN:
            info["speedup_vs_reference"] = _REFERENCE_MEAN[(b, d)] / mean
    benchmark.extra_info.update(info)
