"""Triton masked attention (shipped as aam.kernels.attention; imported only when triton is used).

Two layouts share the kernels: padded [N, H, L, Dh] and packed [T, H, Dh] (VARLEN: sequence b owns
tokens cu_seqlens[b]:cu_seqlens[b+1]; a program whose tile starts past its sequence's length leaves at
once, so short sequences cost nothing).
Forward: one program per (query tile, sequence x head); K/V tiles stream through an online softmax
(fp32 accumulate) up to `bound[n]`, one past the last valid key of the row, so padded tails cost nothing;
an optional key mask handles holes. Saves the log-sum-exp per query (+inf for rows without a key).
Backward: recomputation from the LSE; one kernel for dK/dV (program per key tile) and one for dQ
(program per query tile), no atomics. fp32 inputs use IEEE dots (no TF32) so they meet the fp32 parity
rule. Launch settings are smaller on AMD (ROCm) and in the interpreter."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _extent(CU, BOUND, n, L_Q, L_K, VARLEN: tl.constexpr):
    """(first token, query count, key count, key bound) of sequence n.

    Padded: rows 0.. of batch entry n, bound from BOUND. Packed (VARLEN): tokens CU[n]:CU[n+1] of a
    [T, H, Dh] tensor (the wrapper passes a zero sequence stride), all of them valid keys."""
    if VARLEN:
        first = tl.load(CU + n)
        length = tl.load(CU + n + 1) - first
        tok0 = first.to(tl.int64)  # token offsets in 64 bits: T * H * Dh may pass 2^31
        len_q = length
        len_k = length
        bound = length
    else:
        tok0 = 0
        len_q = L_Q
        len_k = L_K
        bound = tl.load(BOUND + n)
    return tok0, len_q, len_k, bound


@triton.jit
def _fwd_kernel(Q, K, V, Out, LSE, BOUND, CU, MASK, H, L_Q, L_K, scale,
                sqn, sqh, sql, skn, skh, skl, svn, svh, svl, son, soh, sol, sln, slh, sll,
                VARLEN: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_nh = tl.program_id(1)
    n = pid_nh // H
    h = pid_nh % H
    tok0, len_q, len_k, bound = _extent(CU, BOUND, n, L_Q, L_K, VARLEN)
    if pid_m * BLOCK_M >= len_q:  # packed: this sequence is shorter than max_seqlen
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < len_q
    rows = tok0 + offs_m
    q = tl.load(Q + n * sqn + h * sqh + rows[:, None] * sql + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start in range(0, bound, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        valid = offs_n < bound
        if HAS_MASK:
            pad = tl.load(MASK + n * L_K + offs_n, mask=valid, other=1)
            valid = valid & (pad == 0)
        keys = tok0 + offs_n
        k = tl.load(K + n * skn + h * skh + keys[:, None] * skl + offs_d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(V + n * svn + h * svh + keys[:, None] * svl + offs_d[None, :], mask=valid[:, None], other=0.0)
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
    tl.store(Out + n * son + h * soh + rows[:, None] * sol + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=row_ok[:, None])
    tl.store(LSE + n * sln + h * slh + rows * sll, lse, mask=row_ok)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, BOUND, CU, MASK, H, L_Q, L_K, scale,
                     sqn, sqh, sql, skn, skh, skl, svn, svh, svl, sln, slh, sll,
                     VARLEN: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    """One program per key tile: dV = P^T dO, dK = scale dS^T Q over all query tiles (Q/DO, K/V/DK/DV and
    LSE/DELTA share strides)."""
    pid_n = tl.program_id(0)
    pid_nh = tl.program_id(1)
    n = pid_nh // H
    h = pid_nh % H
    tok0, len_q, len_k, bound = _extent(CU, BOUND, n, L_Q, L_K, VARLEN)
    if pid_n * BLOCK_N >= len_k:  # packed: this sequence is shorter than max_seqlen
        return
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    keys = tok0 + offs_n
    valid = offs_n < bound
    if HAS_MASK:
        pad = tl.load(MASK + n * L_K + offs_n, mask=valid, other=1)
        valid = valid & (pad == 0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    if pid_n * BLOCK_N < bound:
        k = tl.load(K + n * skn + h * skh + keys[:, None] * skl + offs_d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(V + n * svn + h * svh + keys[:, None] * svl + offs_d[None, :], mask=valid[:, None], other=0.0)
        for start in range(0, len_q, BLOCK_M):
            offs_m = start + tl.arange(0, BLOCK_M)
            row_ok = offs_m < len_q
            rows = tok0 + offs_m
            qoff = n * sqn + h * sqh + rows[:, None] * sql + offs_d[None, :]
            q = tl.load(Q + qoff, mask=row_ok[:, None], other=0.0)
            do = tl.load(DO + qoff, mask=row_ok[:, None], other=0.0)
            loff = n * sln + h * slh + rows * sll
            lse = tl.load(LSE + loff, mask=row_ok, other=float("inf"))
            delta = tl.load(DELTA + loff, mask=row_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            p = tl.exp(s - lse[:, None])
            p = tl.where(valid[None, :] & row_ok[:, None], p, 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    dk = dk * scale
    ptr_off = n * skn + h * skh + keys[:, None] * skl + offs_d[None, :]
    in_range = (offs_n < len_k)[:, None]
    tl.store(DK + ptr_off, dk.to(DK.dtype.element_ty), mask=in_range)
    tl.store(DV + ptr_off, dv.to(DV.dtype.element_ty), mask=in_range)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, BOUND, CU, MASK, H, L_Q, L_K, scale,
                   sqn, sqh, sql, skn, skh, skl, svn, svh, svl, sln, slh, sll,
                   VARLEN: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    """One program per query tile: dQ = scale dS K over the valid keys. Q/DO/DQ share strides."""
    pid_m = tl.program_id(0)
    pid_nh = tl.program_id(1)
    n = pid_nh // H
    h = pid_nh % H
    tok0, len_q, len_k, bound = _extent(CU, BOUND, n, L_Q, L_K, VARLEN)
    if pid_m * BLOCK_M >= len_q:  # packed: this sequence is shorter than max_seqlen
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < len_q
    rows = tok0 + offs_m
    qoff = n * sqn + h * sqh + rows[:, None] * sql + offs_d[None, :]
    q = tl.load(Q + qoff, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + qoff, mask=row_ok[:, None], other=0.0)
    loff = n * sln + h * slh + rows * sll
    lse = tl.load(LSE + loff, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + loff, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start in range(0, bound, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        valid = offs_n < bound
        if HAS_MASK:
            pad = tl.load(MASK + n * L_K + offs_n, mask=valid, other=1)
            valid = valid & (pad == 0)
        keys = tok0 + offs_n
        k = tl.load(K + n * skn + h * skh + keys[:, None] * skl + offs_d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(V + n * svn + h * svh + keys[:, None] * svl + offs_d[None, :], mask=valid[:, None], other=0.0)
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


def _settings(d: int, dtype: torch.dtype, device: torch.device, varlen: bool, has_mask: bool) -> dict:
    """Kernel constexprs and launch options for one call."""
    cfg = _launch(d, device)
    return dict(VARLEN=varlen, HAS_MASK=has_mask, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], HEAD_DIM=d,
                PRECISION=_precision(dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def _packed_strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(sequence, head, token) strides of a packed [T, H, ...] tensor: tokens are addressed from CU."""
    return 0, x.stride(1), x.stride(0)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bound: torch.Tensor,
                      mask: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v [N, H, L, Dh]; bound int32 [N]; mask [N, Lk] (True at padding) or None -> (out, lse fp32)."""
    n, h, lq, d = q.shape
    lk = k.shape[2]
    out = _empty((n, h, lq, d), q.dtype, q.device)
    lse = _empty((n, h, lq), torch.float32, q.device)
    m, has_mask = _mask_arg(mask, bound)
    grid = (triton.cdiv(lq, _launch(d, q.device)["BLOCK_M"]), n * h)
    _fwd_kernel[grid](q, k, v, out, lse, bound, bound, m, h, lq, lk, float(scale),
                      *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *lse.stride(),
                      **_settings(d, q.dtype, q.device, False, has_mask))
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
    m, has_mask = _mask_arg(mask, bound)
    settings = _settings(d, q.dtype, q.device, False, has_mask)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *lse.stride())
    _bwd_dkdv_kernel[(triton.cdiv(lk, settings["BLOCK_N"]), n * h)](
        q, k, v, dout, lse, delta, dk, dv, bound, bound, m, h, lq, lk, float(scale), *strides, **settings)
    _bwd_dq_kernel[(triton.cdiv(lq, settings["BLOCK_M"]), n * h)](
        q, k, v, dout, lse, delta, dq, bound, bound, m, h, lq, lk, float(scale), *strides, **settings)
    return dq, dk, dv


def attention_varlen_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             max_seqlen: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed q, k, v [T, H, Dh]; sequence b owns tokens cu_seqlens[b]:cu_seqlens[b+1], none longer than
    max_seqlen -> (out [T, H, Dh], lse [T, H] fp32)."""
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    t, h, d = q.shape
    b = cu_seqlens.numel() - 1
    cu = cu_seqlens.to(torch.int32).contiguous()
    out = _empty((t, h, d), q.dtype, q.device)
    lse = _empty((t, h), torch.float32, q.device)
    settings = _settings(d, q.dtype, q.device, True, False)
    grid = (triton.cdiv(max_seqlen, settings["BLOCK_M"]), b * h)
    if grid[0] > 0 and grid[1] > 0:
        _fwd_kernel[grid](q, k, v, out, lse, cu, cu, cu, h, max_seqlen, max_seqlen, float(scale),
                          *_packed_strides(q), *_packed_strides(k), *_packed_strides(v), *_packed_strides(out),
                          *_packed_strides(lse), **settings)
    return out, lse


def attention_varlen_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              out: torch.Tensor, lse: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                              scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) [T, H, Dh] of the packed form by recomputation from the saved LSE [T, H]."""
    q, k, v, dout = (x.contiguous() for x in (q, k, v, dout))
    t, h, d = q.shape
    b = cu_seqlens.numel() - 1
    cu = cu_seqlens.to(torch.int32).contiguous()
    delta = (dout.float() * out.float()).sum(-1).contiguous()
    lse = lse.contiguous()
    dq, dk, dv = (_empty(x.shape, x.dtype, x.device) for x in (q, k, v))
    settings = _settings(d, q.dtype, q.device, True, False)
    strides = (*_packed_strides(q), *_packed_strides(k), *_packed_strides(v), *_packed_strides(lse))
    args = (h, max_seqlen, max_seqlen, float(scale), *strides)
    if max_seqlen > 0 and b > 0:
        _bwd_dkdv_kernel[(triton.cdiv(max_seqlen, settings["BLOCK_N"]), b * h)](
            q, k, v, dout, lse, delta, dk, dv, cu, cu, cu, *args, **settings)
        _bwd_dq_kernel[(triton.cdiv(max_seqlen, settings["BLOCK_M"]), b * h)](
            q, k, v, dout, lse, delta, dq, cu, cu, cu, *args, **settings)
    return dq, dk, dv
