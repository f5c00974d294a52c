"""Parity helper for the attention tests (DESIGN.md section 3): float64 math is the reference; a backend
passes when its error is at most 2x (forward) / 3x (backward) that of math run in the same precision,
with absolute floors."""

from __future__ import annotations

import torch

from aam.ops import attention as A
from aam.ops.attention import masked_attention

# (forward floor, backward floor) per dtype
FLOORS = {torch.float32: (1e-5, 1e-4), torch.float16: (1e-3, 1e-2), torch.bfloat16: (1e-2, 5e-2)}


def make_case(n: int, seq: int, h: int = 2, d: int = 16, seed: int = 0, holes: bool = False,
              lengths: torch.Tensor | None = None):
    """float64 q, k, v, dout and a padding mask with a full row, an empty row and a length-1 row."""
    g = torch.Generator().manual_seed(seed)
    q, k, v, dout = (torch.randn(n, h, seq, d, generator=g, dtype=torch.float64) for _ in range(4))
    if lengths is None:
        lengths = torch.randint(1, seq + 1, (n,), generator=g)
        lengths[0] = seq
        if n >= 3:
            lengths[1] = 0
            lengths[2] = 1
    mask = torch.arange(seq)[None, :] >= lengths[:, None]
    if holes and seq > 2:
        mask = mask | (torch.rand(n, seq, generator=g) < 0.2)
    return q, k, v, dout, mask


def run(backend: str, dtype: torch.dtype, q, k, v, dout, mask, lengths=None):
    inputs = [t.to(dtype).clone().requires_grad_(True) for t in (q, k, v)]
    if lengths is not None:
        out = masked_attention(*inputs, key_lengths=lengths, backend=backend)
    else:
        out = masked_attention(*inputs, key_padding_mask=mask, backend=backend)
    grads = torch.autograd.grad(out, inputs, dout.to(dtype))
    return out.detach().double(), [g.double() for g in grads]


def assert_parity(backend: str, dtype: torch.dtype, q, k, v, dout, mask, lengths=None) -> None:
    ref_out, ref_grads = run("math", torch.float64, q, k, v, dout, mask)
    low_out, low_grads = run("math", dtype, q, k, v, dout, mask)
    out, grads = run(backend, dtype, q, k, v, dout, mask, lengths)
    floor_f, floor_b = FLOORS[dtype]
    assert not torch.isnan(out).any(), f"{backend}: NaN in the output"
    err = (out - ref_out).abs().max().item()
    tol = max(2 * (low_out - ref_out).abs().max().item(), floor_f)
    assert err <= tol, f"{backend} {dtype} forward error {err:.3e} > {tol:.3e}"
    for name, g, lg, rg in zip("qkv", grads, low_grads, ref_grads, strict=True):
        assert not torch.isnan(g).any(), f"{backend}: NaN in d{name}"
        err = (g - rg).abs().max().item()
        tol = max(3 * (lg - rg).abs().max().item(), floor_b)
        assert err <= tol, f"{backend} {dtype} d{name} error {err:.3e} > {tol:.3e}"
    # the contract: rows without a valid key give exactly 0 output and 0 gradient
    empty = mask.all(-1)
    if empty.any():
        assert (out[empty] == 0).all()
        assert (grads[0][empty] == 0).all()
    # padded keys receive exactly 0 gradient
    pad = mask[:, None, :, None].expand_as(grads[1])
    assert (grads[1][pad] == 0).all() and (grads[2][pad] == 0).all()


def poison_outputs(monkeypatch, module=A) -> None:
    """Make the backend's output allocations NaN-filled so unwritten elements show up."""

    def empty(shape, dtype, device="cpu"):
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(module, "_empty", empty)
