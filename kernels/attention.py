"""Triton masked attention (shipped as aam.kernels.attention; imported only when triton is used).

Forward: one program per (query tile, sequence x head); K/V tiles stream through an online softmax
(fp32 accumulate) up to `bound[n]`, one past the last valid key of the row, so padded tails cost nothing;
an optional key mask handles holes. Saves the log-sum-exp per query (+inf for rows without a key).
Backward: recomputation from the LSE; one kernel for dK/dV (program per key tile) and one for dQ
(program per query tile), no atomics. fp32 inputs use IEEE dots (no TF32) so they meet the fp32 parity
rule. Launch settings are smaller on AMD (ROCm) and in the interpreter.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _fwd_kernel(Q, K, V, Out, LSE, BOUND, MASK, H, L_Q, L_K, scale,
                sqn, sqh, sql, skn, skh, skl, svn, svh, svl, son, soh, sol,
                HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_nh = tl.program_id(1)
    n = pid_nh // H
    h = pid_nh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < L_Q
    q = tl.load(Q + n * sqn + h * sqh + offs_m[:, None] * sql + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    bound = tl.load(BOUND + n)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start in range(0, bound, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        valid = offs_n < bound
        if HAS_MASK:
            pad = tl.load(MASK + n * L_K + offs_n, mask=valid, other=1)
            valid = valid & (pad == 0)
        k = tl.load(K + n * skn + h * skh + offs_n[:, None] * skl + offs_d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(V + n * svn + h * svh + offs_n[:, None] * svl + offs_d[None, :], mask=valid[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    has = l_i > 0
    l_safe = tl.where(has, l_i, 1.0)
    out = tl.where(has[:, None], acc / l_safe[:, None], 0.0)
    lse = tl.where(has, m_i + tl.log(l_safe), float("inf"))
    tl.store(Out + n * son + h * soh + offs_m[:, None] * sol + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=row_ok[:, None])
    tl.store(LSE + pid_nh * L_Q + offs_m, lse, mask=row_ok)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, BOUND, MASK, H, L_Q, L_K, scale,
                     sqn, sqh, sql, skn, skh, skl, svn, svh, svl,
                     HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    """One program per key tile: dV = P^T dO, dK = scale dS^T Q over all query tiles (Q/DO and K/V/DK/DV
    share strides)."""
    pid_n = tl.program_id(0)
    pid_nh = tl.program_id(1)
    n = pid_nh // H
    h = pid_nh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    bound = tl.load(BOUND + n)
    valid = offs_n < bound
    if HAS_MASK:
        pad = tl.load(MASK + n * L_K + offs_n, mask=valid, other=1)
        valid = valid & (pad == 0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    if pid_n * BLOCK_N < bound:
        k = tl.load(K + n * skn + h * skh + offs_n[:, None] * skl + offs_d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(V + n * svn + h * svh + offs_n[:, None] * svl + offs_d[None, :], mask=valid[:, None], other=0.0)
        for start in range(0, L_Q, BLOCK_M):
            offs_m = start + tl.arange(0, BLOCK_M)
            row_ok = offs_m < L_Q
            q = tl.load(Q + n * sqn + h * sqh + offs_m[:, None] * sql + offs_d[None, :], mask=row_ok[:, None],
                        other=0.0)
            do = tl.load(DO + n * sqn + h * sqh + offs_m[:, None] * sql + offs_d[None, :], mask=row_ok[:, None],
                         other=0.0)
            lse = tl.load(LSE + pid_nh * L_Q + offs_m, mask=row_ok, other=float("inf"))
            delta = tl.load(DELTA + pid_nh * L_Q + offs_m, mask=row_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            p = tl.exp(s - lse[:, None])
            p = tl.where(valid[None, :] & row_ok[:, None], p, 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    dk = dk * scale
    ptr_off = n * skn + h * skh + offs_n[:, None] * skl + offs_d[None, :]
    in_range = (offs_n < L_K)[:, None]
    tl.store(DK + ptr_off, dk.to(DK.dtype.element_ty), mask=in_range)
    tl.store(DV + ptr_off, dv.to(DV.dtype.element_ty), mask=in_range)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, BOUND, MASK, H, L_Q, L_K, scale,
                   sqn, sqh, sql, skn, skh, skl, svn, svh, svl,
                   HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    """One program per query tile: dQ = scale dS K over the valid keys. Q/DO/DQ share strides."""
    pid_m = tl.program_id(0)
    pid_nh = tl.program_id(1)
    n = pid_nh // H
    h = pid_nh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < L_Q
    qoff = n * sqn + h * sqh + offs_m[:, None] * sql + offs_d[None, :]
    q = tl.load(Q + qoff, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + qoff, mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + pid_nh * L_Q + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + pid_nh * L_Q + offs_m, mask=row_ok, other=0.0)
    bound = tl.load(BOUND + n)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start in range(0, bound, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        valid = offs_n < bound
        if HAS_MASK:
            pad = tl.load(MASK + n * L_K + offs_n, mask=valid, other=1)
            valid = valid & (pad == 0)
        k = tl.load(K + n * skn + h * skh + offs_n[:, None] * skl + offs_d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(V + n * svn + h * svh + offs_n[:, None] * svl + offs_d[None, :], mask=valid[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        p = tl.exp(s - lse[:, None])
        p = tl.where(valid[None, :] & row_ok[:, None], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    tl.store(DQ + qoff, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Output allocation (tests replace it to poison outputs with NaN)."""
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _launch(head_dim: int, device: torch.device) -> dict:
    """Tile sizes and launch settings: smaller tiles in the interpreter and for Dh=128, fewer warps on AMD."""
    if _interpreting() or device.type == "cpu":
        return {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 1, "num_stages": 1}
    amd = bool(torch.version.hip)
    block = 64 if head_dim <= 64 else 32
    return {"BLOCK_M": block, "BLOCK_N": block, "num_warps": 4, "num_stages": 1 if amd else 2}


def _precision(dtype: torch.dtype) -> str:
    """IEEE dots everywhere: fp32 without TF32 (parity), fp16/bf16 are native with fp32 accumulate."""
    return "ieee"


def _mask_arg(mask: torch.Tensor | None, bound: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if mask is None:
        return bound, False
    return mask.contiguous().view(torch.uint8), True


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bound: torch.Tensor,
                      mask: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v [N, H, L, Dh]; bound int32 [N]; mask [N, Lk] (True at padding) or None -> (out, lse fp32)."""
    n, h, lq, d = q.shape
    lk = k.shape[2]
    out = _empty((n, h, lq, d), q.dtype, q.device)
    lse = _empty((n, h, lq), torch.float32, q.device)
    cfg = _launch(d, q.device)
    m, has_mask = _mask_arg(mask, bound)
    grid = (triton.cdiv(lq, cfg["BLOCK_M"]), n * h)
    _fwd_kernel[grid](q, k, v, out, lse, bound, m, h, lq, lk, float(scale),
                      *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
                      HAS_MASK=has_mask, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], HEAD_DIM=d,
                      PRECISION=_precision(q.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out, lse


def attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                       lse: torch.Tensor, bound: torch.Tensor, mask: torch.Tensor | None,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) by recomputation from the saved LSE."""
    q, k, v, dout = (t.contiguous() for t in (q, k, v, dout))
    n, h, lq, d = q.shape
    lk = k.shape[2]
    delta = (dout.float() * out.float()).sum(-1).contiguous()
    lse = lse.contiguous()
    dq, dk, dv = (_empty(x.shape, x.dtype, x.device) for x in (q, k, v))
    cfg = _launch(d, q.device)
    m, has_mask = _mask_arg(mask, bound)
    common = dict(HAS_MASK=has_mask, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], HEAD_DIM=d,
                  PRECISION=_precision(q.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    _bwd_dkdv_kernel[(triton.cdiv(lk, cfg["BLOCK_N"]), n * h)](
        q, k, v, dout, lse, delta, dk, dv, bound, m, h, lq, lk, float(scale), *strides, **common)
    _bwd_dq_kernel[(triton.cdiv(lq, cfg["BLOCK_M"]), n * h)](
        q, k, v, dout, lse, delta, dq, bound, m, h, lq, lk, float(scale), *strides, **common)
    return dq, dk, dv
