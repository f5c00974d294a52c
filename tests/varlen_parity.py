"""Parity helper for packed varlen attention (DESIGN.md section 3): float64 `_varlen_math` is the reference;
a backend passes when its error is at most 2x (forward) / 3x (backward) that of `_varlen_math` in the same
precision, with the floors of tests/attention_parity.py."""

from __future__ import annotations

import torch

from aam.ops import attention as A
from attention_parity import FLOORS


def make_varlen_case(lengths: list[int], h: int, d: int, seed: int, device: str = "cpu"):
    """float64 q, k, v, dout [T, H, D] and int64 cu_seqlens [B + 1] for the given sequence lengths."""
    lens = torch.tensor(lengths, dtype=torch.int64)
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)])
    g = torch.Generator().manual_seed(seed)
    q, k, v, dout = (torch.randn(int(lens.sum()), h, d, generator=g, dtype=torch.float64) for _ in range(4))
    return [x.to(device) for x in (q, k, v, dout, cu)]


def run_varlen(backend: str, dtype: torch.dtype, q, k, v, dout, cu, max_seqlen: int, scale: float):
    """(output, [dq, dk, dv]) as float64; backend "math" calls _varlen_math directly (in `dtype`)."""
    inputs = [t.to(dtype).clone().requires_grad_(True) for t in (q, k, v)]
    if backend == "math":
        out = A._varlen_math(*inputs, cu, max_seqlen, scale, 0.0)
    else:
        out = A.masked_attention_varlen(*inputs, cu, max_seqlen, scale=scale, backend=backend)
    grads = torch.autograd.grad(out, inputs, dout.to(dtype))
    return out.detach().double(), [g.double() for g in grads]


def assert_varlen_parity(backend: str, dtype: torch.dtype, q, k, v, dout, cu, max_seqlen: int | None = None):
    """Parity of `backend` against float64 math; max_seqlen (default: the longest sequence) goes to the backend."""
    longest = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    scale = q.shape[-1] ** -0.5
    ref_out, ref_grads = run_varlen("math", torch.float64, q, k, v, dout, cu, longest, scale)
    low_out, low_grads = run_varlen("math", dtype, q, k, v, dout, cu, longest, scale)
    out, grads = run_varlen(backend, dtype, q, k, v, dout, cu, longest if max_seqlen is None else max_seqlen, scale)
    floor_f, floor_b = FLOORS[dtype]
    assert not out.isnan().any(), f"{backend}: NaN in the varlen output"
    err, tol = (out - ref_out).abs().max().item(), max(2 * (low_out - ref_out).abs().max().item(), floor_f)
    assert err <= tol, f"{backend} {dtype} varlen forward error {err:.3e} > {tol:.3e}"
    for name, g, lg, rg in zip("qkv", grads, low_grads, ref_grads, strict=True):
        assert not g.isnan().any(), f"{backend}: NaN in varlen d{name}"
        err, tol = (g - rg).abs().max().item(), max(3 * (lg - rg).abs().max().item(), floor_b)
        assert err <= tol, f"{backend} {dtype} varlen d{name} error {err:.3e} > {tol:.3e}"
    return out, grads
