"""masked_attention fwd+bwd speed and memory for every backend that runs here, at the model's shapes.

Shapes (H=4, Dh=32): nucleotide level N sequences x L=101/151; sample level N samples x L=64/256/1024 ASVs.
Lengths are realistic: most rows use 30-60% of L, one in ten is full. CPU sizes are scaled down by
default; AAM_BENCH_FULL=1 runs the full sizes (N=8192 nucleotide rows, 64 samples), meant for GPUs.

    make dev && PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_attention.py --benchmark-enable -q
    PYTHONPATH=src .venv/bin/python benchmarks/bench_attention.py      # custom vs sdpa ratio table

Each benchmark records in extra_info: the bytes autograd saves for backward (activation memory, all
devices) and the peak GPU memory of one fwd+bwd (CUDA/ROCm).

The packed form (masked_attention_varlen: the same rows without padding, [T, H, Dh] + cu_seqlens) runs
in the same groups as test_attention_varlen_fwd_bwd[...]: triton (GPUs only; skipped with the reason on
the CPU) and custom (wherever it has a varlen kernel).
"""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch

from aam.errors import BackendUnavailable
from aam.ops.attention import masked_attention, masked_attention_varlen, masked_attention_varlen_qkv

FULL = os.environ.get("AAM_BENCH_FULL") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HEADS, HEAD_DIM = 4, 32
# (name, N, L)
SHAPES = [
    ("nucleotide", 8192 if FULL else 256, 101),
    ("nucleotide", 8192 if FULL else 256, 151),
    ("sample", 64 if FULL else 16, 64),
    ("sample", 64 if FULL else 16, 256),
    ("sample", 64 if FULL else 4, 1024),
]
BACKENDS = ["custom", "triton", "sdpa", "math"]
VARLEN_BACKENDS = ["triton", "custom"]
DTYPE = torch.float32 if DEVICE.type == "cpu" else torch.bfloat16


def make_inputs(n: int, seq: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(n, HEADS, seq, HEAD_DIM, generator=g).to(DEVICE, DTYPE).requires_grad_(True)
               for _ in range(3))
    frac = 0.3 + 0.3 * torch.rand(n, generator=g)
    lengths = (frac * seq).long().clamp(1, seq)
    lengths[::10] = seq
    mask = (torch.arange(seq)[None, :] >= lengths[:, None]).to(DEVICE)
    return q, k, v, mask


def packed_inputs(q, k, v, mask):
    """The padded batch's valid rows in the packed layout: q, k, v [T, H, Dh] leaves, cu_seqlens, max_seqlen."""
    lengths = (~mask).sum(-1)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int64, device=mask.device)
    cu[1:] = lengths.cumsum(0)
    packed = [x.detach().transpose(1, 2)[~mask].contiguous().requires_grad_(True) for x in (q, k, v)]
    return *packed, cu, int(lengths.max())


def fwd_bwd(q, k, v, mask, backend):
    out = masked_attention(q, k, v, key_padding_mask=mask, backend=backend)
    out.backward(torch.ones_like(out))
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def varlen_fwd_bwd(q, k, v, cu, max_seqlen, backend):
    out = masked_attention_varlen(q, k, v, cu, max_seqlen, backend=backend)
    out.backward(torch.ones_like(out))
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def saved_bytes(forward) -> int:
    """Bytes autograd saves for backward while `forward()` runs."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return total


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("level,n,seq", SHAPES, ids=[f"{s[0]}-N{s[1]}-L{s[2]}" for s in SHAPES])
def test_attention_fwd_bwd(benchmark, backend, level, n, seq):
    q, k, v, mask = make_inputs(n, seq)
    try:
        fwd_bwd(q, k, v, mask, backend)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    benchmark.group = f"attention {level} N={n} L={seq} {DEVICE.type} {str(DTYPE).removeprefix('torch.')}"
    benchmark.extra_info["saved_for_backward_bytes"] = saved_bytes(
        lambda: masked_attention(q, k, v, key_padding_mask=mask, backend=backend))
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd(q, k, v, mask, backend)
        benchmark.extra_info["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    benchmark.pedantic(fwd_bwd, args=(q, k, v, mask, backend), rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("backend", VARLEN_BACKENDS)
@pytest.mark.parametrize("level,n,seq", SHAPES, ids=[f"{s[0]}-N{s[1]}-L{s[2]}" for s in SHAPES])
def test_attention_varlen_fwd_bwd(benchmark, backend, level, n, seq):
    q, k, v, cu, max_seqlen = packed_inputs(*make_inputs(n, seq))
    try:
        varlen_fwd_bwd(q, k, v, cu, max_seqlen, backend)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    benchmark.group = f"attention {level} N={n} L={seq} {DEVICE.type} {str(DTYPE).removeprefix('torch.')}"
    benchmark.extra_info["saved_for_backward_bytes"] = saved_bytes(
        lambda: masked_attention_varlen(q, k, v, cu, max_seqlen, backend=backend))
    benchmark.extra_info["tokens"] = q.shape[0]
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        varlen_fwd_bwd(q, k, v, cu, max_seqlen, backend)
        benchmark.extra_info["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    benchmark.pedantic(varlen_fwd_bwd, args=(q, k, v, cu, max_seqlen, backend), rounds=3, iterations=1,
                       warmup_rounds=1)


def ratio_table(reps: int = 3) -> None:
    """Best-of-`reps` fwd+bwd of custom and sdpa at every shape, and the sdpa / custom ratio."""
    print(f"device {DEVICE.type}  dtype {DTYPE}  threads {torch.get_num_threads()}  full={FULL}")
    print(f"{'shape':<24} {'custom ms':>10} {'sdpa ms':>10} {'sdpa/custom':>12}")
    for level, n, seq in SHAPES:
        q, k, v, mask = make_inputs(n, seq)
        times = {}
        for backend in ("custom", "sdpa"):
            fwd_bwd(q, k, v, mask, backend)
            best = float("inf")
            for _ in range(reps):
                start = time.perf_counter()
                fwd_bwd(q, k, v, mask, backend)
                best = min(best, time.perf_counter() - start)
            times[backend] = best
        print(f"{level + f' N={n} L={seq}':<24} {times['custom'] * 1e3:>10.1f} {times['sdpa'] * 1e3:>10.1f} "
              f"{times['sdpa'] / times['custom']:>12.2f}")


if __name__ == "__main__":
    ratio_table(int(sys.argv[1]) if len(sys.argv) > 1 else 3)


def test_quarter_half_padded_vs_sdpa(benchmark):
    """The speed issue's attention case: N 2048, H 4, L 101, Dh 32, a quarter of the rows half padded; custom vs
    SDPA fwd+bwd, interleaved, best of 3 each; extra_info["sdpa_over_custom"]."""
    n, seq = 2048, 101
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, HEADS, seq, HEAD_DIM, generator=g).to(DEVICE, DTYPE).requires_grad_(True)
               for _ in range(3))
    lengths = torch.full((n,), seq)
    lengths[torch.randperm(n, generator=g)[: n // 4]] = seq // 2
    mask = (torch.arange(seq)[None, :] >= lengths[:, None]).to(DEVICE)
    best = {"custom": float("inf"), "sdpa": float("inf")}
    for _ in range(3):
        for backend in best:
            t0 = time.perf_counter()
            fwd_bwd(q, k, v, mask, backend)
            best[backend] = min(best[backend], time.perf_counter() - t0)
    benchmark.extra_info.update({"seconds": best, "sdpa_over_custom": best["sdpa"] / best["custom"]})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\nN {n} L {seq}, a quarter half padded: custom {best['custom'] * 1e3:.0f} ms, sdpa "
          f"{best['sdpa'] * 1e3:.0f} ms: {best['sdpa'] / best['custom']:.2f}x")


def test_varlen_qkv_packed_vs_unbound(benchmark):
    """The ASV encoder's attention at the roofline's shape (200 reads of 140-151 tokens, H 4, Dh 32) on the
    custom kernel, fwd+bwd from one [T, 3, H, Dh] qkv tensor: read in place and one dqkv written
    (masked_attention_varlen_qkv) vs unbound q, k, v whose gradients autograd stacks. Interleaved, best of 5;
    extra_info["unbound_over_packed"]."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(140, 152, (200,), generator=g)
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(DEVICE)
    qkv = torch.randn(int(lengths.sum()), 3, HEADS, HEAD_DIM, generator=g).to(DEVICE, DTYPE).requires_grad_(True)
    max_len = int(lengths.max())

    def packed():
        masked_attention_varlen_qkv(qkv, cu, max_len, backend="custom").sum().backward()

    def unbound():
        masked_attention_varlen(*qkv.unbind(1), cu, max_len, backend="custom").sum().backward()

    best = {"packed": float("inf"), "unbound": float("inf")}
    runs = {"packed": packed, "unbound": unbound}
    for _ in range(5):
        for name, fn in runs.items():
            qkv.grad = None
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    benchmark.extra_info.update({"seconds": best, "unbound_over_packed": best["unbound"] / best["packed"],
                                 "tokens": int(lengths.sum())})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\nvarlen T {int(lengths.sum())}: packed qkv {best['packed'] * 1e3:.1f} ms, unbound "
          f"{best['unbound'] * 1e3:.1f} ms: {best['unbound'] / best['packed']:.2f}x")
