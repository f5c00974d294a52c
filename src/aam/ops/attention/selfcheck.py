"""Parity and contract checks of masked attention: the test cases, `aam kernels`' self-checks and the check
that `auto` runs before it trusts SDPA on ROCm. The tolerances are those of aam.ops.parity.

The contract (DESIGN.md section 3): a query whose keys are all padding has exactly 0 output and 0
gradient; the tests also demand exactly 0 gradient for padded keys.
"""

from __future__ import annotations

import math

import torch

from aam.ops import parity, registry
from aam.ops.attention import sdpa
from aam.ops.attention.reference import attention_math, lengths_to_padding_mask, varlen_math

OP = "masked_attention"
OP_VARLEN = "masked_attention_varlen"
NAN = float("nan")


def make_case(n: int, seq: int, h: int = 2, d: int = 16, seed: int = 0, holes: bool = False,
              lengths: torch.Tensor | None = None):
    """float64 q, k, v, dout [N, H, L, Dh] and a padding mask [N, L] with a full row, an empty row and a
    length-1 row (when n >= 3); holes: about a fifth of the remaining keys masked too."""
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


def run(backend: str, dtype: torch.dtype, q, k, v, dout, mask, lengths=None, nan_padding: bool = False):
    """(output, [dq, dk, dv]) in float64 of masked_attention on `backend` in `dtype` (key_lengths when given,
    else the mask). nan_padding: the padded keys of k and v are NaN (a kernel must never read them)."""
    from aam.ops.attention.dispatch import masked_attention

    if nan_padding:
        pad = mask[:, None, :, None].expand_as(k)
        k, v = k.masked_fill(pad, NAN), v.masked_fill(pad, NAN)
    inputs = [t.to(dtype).clone().requires_grad_(True) for t in (q, k, v)]
    if lengths is not None:
        out = masked_attention(*inputs, key_lengths=lengths, backend=backend)
    else:
        out = masked_attention(*inputs, key_padding_mask=mask, backend=backend)
    grads = torch.autograd.grad(out, inputs, dout.to(dtype))
    return out.detach().double(), [g.double() for g in grads]


def contract_failures(out: torch.Tensor, grads, mask: torch.Tensor, padded_keys: bool = True) -> list[str]:
    """What breaks the contract: rows without a valid key must give exactly 0 output and dq, and (when
    `padded_keys`) padded keys exactly 0 dk and dv. `out` [N, H, L, Dh]; grads dq, dk, dv."""
    failures = []
    empty = mask.all(-1)
    if empty.any() and not (bool((out[empty] == 0).all()) and bool((grads[0][empty] == 0).all())):
        failures.append("fully padded row not exactly 0")
    if padded_keys:
        pad = mask[:, None, :, None].expand_as(grads[1])
        if not (bool((grads[1][pad] == 0).all()) and bool((grads[2][pad] == 0).all())):
            failures.append("padded keys have a non-zero gradient")
    return failures


def compare(ref, low, got, mask, dtype: torch.dtype, what: str = "", padded_keys: bool = True) -> dict:
    """The parity rule on (output, [dq, dk, dv]) of float64 math, math in `dtype` and the backend, plus the
    contract. {"ok", "max_err_fwd", "max_err_bwd", "tol_fwd", "tol_bwd", "nan", "detail"}."""
    report = parity.check_fwd_bwd(ref, low, got, dtype, names=("dq", "dk", "dv"), what=what)
    contract = [] if mask is None else contract_failures(got[0], got[1], mask, padded_keys)
    fwd, bwd = report.worst("forward"), report.worst("backward")
    err_b = max(c.err for c in report.checks if c.kind == "backward")
    detail = (f"{str(dtype).removeprefix('torch.')}: max err fwd {fwd.err:.2e} (tol {fwd.bound:.1e}), "
              f"bwd {err_b:.2e} (tol {bwd.bound:.1e})")
    if report.nan:
        detail += ", NaN in output or gradient"
    detail += "".join(f", {c}" for c in contract)
    if not report.ok:
        detail += " [" + "; ".join(report.failures()) + "]"
    return {"ok": report.ok and not contract, "max_err_fwd": fwd.err, "max_err_bwd": err_b, "tol_fwd": fwd.bound,
            "tol_bwd": bwd.bound, "nan": report.nan, "detail": detail}


def assert_parity(backend: str, dtype: torch.dtype, q, k, v, dout, mask, lengths=None,
                  nan_padding: bool = False) -> None:
    """DESIGN.md's parity rule and the contract for `backend` in `dtype` against float64 math."""
    ref = run("math", torch.float64, q, k, v, dout, mask)
    low = run("math", dtype, q, k, v, dout, mask)
    got = run(backend, dtype, q, k, v, dout, mask, lengths, nan_padding)
    res = compare(ref, low, got, mask, dtype, what=backend)
    assert res["ok"], f"{backend}: {res['detail']}"


# ---- self-checks (aam kernels; SDPA on ROCm before `auto` trusts it) ----------------------------------


def _random_case(device: torch.device, n: int = 5, h: int = 2, seq: int = 37, d: int = 32):
    g = torch.Generator().manual_seed(1234)
    q, k, v = (torch.randn(n, h, seq, d, generator=g, dtype=torch.float64) for _ in range(3))
    lengths = torch.tensor([seq, 1, 0, seq // 2, 7][:n], dtype=torch.int64)
    mask = lengths_to_padding_mask(lengths, seq)
    mask[3, 2] = True  # one non-prefix mask row
    return [t.to(device) for t in (q, k, v)], mask.to(device)


def check_run(fn, device: torch.device, dtype: torch.dtype) -> dict:
    """fn(q, k, v, mask) on the random case in `dtype` against float64 math: the parity rule, NaN, and
    exactly-zero fully padded rows. Returns `compare`'s dict."""
    (q, k, v), mask = _random_case(device)
    scale = 1.0 / math.sqrt(q.shape[-1])
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(device)

    def result(f, dt):
        inputs = [t.to(dt).clone().requires_grad_(True) for t in (q, k, v)]
        out = f(*inputs, mask)
        grads = torch.autograd.grad(out, inputs, grad_out.to(dt))
        return out.detach(), [g.detach() for g in grads]

    def math_fn(a, b, c, m):
        return attention_math(a, b, c, m, scale, 0.0)

    return compare(result(math_fn, torch.float64), result(math_fn, dtype), result(fn, dtype), mask, dtype,
                   padded_keys=False)


def _combine(results: list[dict]) -> dict:
    worst = max(results, key=lambda r: r["max_err_fwd"] / r["tol_fwd"])
    return {**worst, "ok": all(r["ok"] for r in results), "nan": any(r["nan"] for r in results),
            "max_err_bwd": max(r["max_err_bwd"] for r in results),
            "detail": "; ".join(r["detail"] for r in results)}


def sdpa_trust_check(device: torch.device) -> str | None:
    """The registry self-check of SDPA: on ROCm its masked paths have returned wrong results, so it is
    compared with math (fp32, fp16, bf16) before `auto` trusts it; elsewhere None (trusted)."""
    if device.type != "cuda" or not torch.version.hip:
        return None

    # Calls the SDPA implementation directly: dispatching here would re-enter this self-check.
    def run_sdpa(q, k, v, mask):
        return sdpa.attention(q, k, v, mask, None, 1.0 / math.sqrt(q.shape[-1]), 0.0)

    res = _combine([check_run(run_sdpa, device, dt) for dt in (torch.float32, torch.float16, torch.bfloat16)])
    return None if res["ok"] else f"self-check against math failed ({res['detail']})"


def _backend_check(op: str, name: str, req: registry.KernelRequest) -> str | None:
    for b in registry.backends(op):
        if b.name == name:
            return b.check(req)
    return f"no backend {name}"


def self_check(backend: str, device: torch.device | str, dtype: torch.dtype | None = None) -> dict:
    """Random masked case (fully padded row, length-1 row, a hole in a mask) vs float64 math.

    dtype None checks float32, plus bfloat16 on GPUs (when the backend takes it).
    Returns {"ok", "max_err_fwd", "max_err_bwd", "tol_fwd", "tol_bwd", "nan", "detail"}.
    """
    from aam.ops.attention.dispatch import masked_attention

    device = torch.device(device)
    dtypes = [dtype] if dtype is not None else (
        [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32])
    results = []
    for dt in dtypes:
        req = registry.KernelRequest(device, dt, head_dim=32)
        if dtype is None and dt != torch.float32 and backend != "auto" \
                and _backend_check(OP, backend, req) is not None:
            continue  # the backend does not take this dtype here; the table says so

        def run_backend(q, k, v, mask):
            return masked_attention(q, k, v, key_padding_mask=mask, backend=backend)

        results.append(check_run(run_backend, device, dt))
    return _combine(results)


# ---- packed varlen ------------------------------------------------------------------------------------


def make_varlen_case(lengths: list[int], h: int, d: int, seed: int, device: str | torch.device = "cpu"):
    """float64 q, k, v, dout [T, H, D] and int64 cu_seqlens [B + 1] for the given sequence lengths."""
    lens = torch.tensor(lengths, dtype=torch.int64)
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)])
    g = torch.Generator().manual_seed(seed)
    q, k, v, dout = (torch.randn(int(lens.sum()), h, d, generator=g, dtype=torch.float64) for _ in range(4))
    return [x.to(device) for x in (q, k, v, dout, cu)]


def run_varlen(backend: str, dtype: torch.dtype, q, k, v, dout, cu, max_seqlen: int, scale: float):
    """(output, [dq, dk, dv]) as float64; backend "math" calls the math varlen form directly (in `dtype`)."""
    from aam.ops.attention.dispatch import masked_attention_varlen

    inputs = [t.to(dtype).clone().requires_grad_(True) for t in (q, k, v)]
    if backend == "math":
        out = varlen_math(*inputs, cu, max_seqlen, scale, 0.0)
    else:
        out = masked_attention_varlen(*inputs, cu, max_seqlen, scale=scale, backend=backend)
    grads = torch.autograd.grad(out, inputs, dout.to(dtype))
    return out.detach().double(), [g.double() for g in grads]


def check_varlen(backend: str, dtype: torch.dtype, q, k, v, dout, cu, max_seqlen: int | None = None):
    """(compare's dict, output, grads) of `backend` against float64 math; max_seqlen (default: the longest
    sequence) goes to the backend."""
    longest = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    scale = q.shape[-1] ** -0.5
    ref = run_varlen("math", torch.float64, q, k, v, dout, cu, longest, scale)
    low = run_varlen("math", dtype, q, k, v, dout, cu, longest, scale)
    got = run_varlen(backend, dtype, q, k, v, dout, cu, longest if max_seqlen is None else max_seqlen, scale)
    return compare(ref, low, got, None, dtype, what=f"{backend} varlen"), got[0], got[1]


def assert_varlen_parity(backend: str, dtype: torch.dtype, q, k, v, dout, cu, max_seqlen: int | None = None):
    """Assert the parity rule for the varlen op; returns the backend's (output, grads) in float64."""
    res, out, grads = check_varlen(backend, dtype, q, k, v, dout, cu, max_seqlen)
    assert res["ok"], f"{backend}: {res['detail']}"
    return out, grads


def self_check_masked_attention_varlen(backend: str, device: torch.device | str,
                                       dtype: torch.dtype = torch.float32) -> dict:
    """Packed sequences (one of length 0 and one of length 1) vs float64 padded math."""
    q, k, v, dout, cu = make_varlen_case([5, 0, 1, 13], h=2, d=16, seed=99, device=device)
    res, _, _ = check_varlen(backend, dtype, q, k, v, dout, cu)
    return res
