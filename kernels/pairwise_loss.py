"""Triton kernels of the pairwise UniFrac loss (shipped as aam.kernels.pairwise_loss).

Forward: one program per (row tile, column tile) of pairs on or above the diagonal. Each program
accumulates the Gram tile e_i . e_j with tl.dot over chunks of D (fp32 accumulation; fp32 inputs in
IEEE precision, never TF32), forms d2 = n_i + n_j - 2 g_ij, the residual and the backward coefficient
c_ij = 2 w_ij r_ij f'(d_ij) / d_ij, writes c_ij to both halves of a [B, B] fp32 workspace and one
(loss, weight) partial sum per program; torch sums the partials in float64 (deterministic, no atomics).
Backward: one program per (row tile, D chunk): G = factor * (diag(C 1) E - C E) with tl.dot over column
tiles. fp32 embeddings are centred first (distances do not change, the Gram form cancels much less),
and a d2 below the Gram form's rounding noise counts as a duplicate (distance 0, gradient 0).
Launch settings suit AMD too: num_warps 4, 32 x 32 tiles.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 32
BD_FWD = 32
BD_BWD = 64
NUM_WARPS = 4
# A d2 under NOISE * (n_i + n_j) is rounding noise of the Gram form (fp32 accumulation): distance 0.
NOISE = 4.0 * 2.0**-23


@triton.jit
def _fwd_kernel(E, T, W, C, P, B, D, stride_e, inv_scale, noise,
                HAS_W: tl.constexpr, TANH: tl.constexpr, IS_F32: tl.constexpr,
                BLOCK: tl.constexpr, BD: tl.constexpr):
    pid_i = tl.program_id(0)
    pid_j = tl.program_id(1)
    n_tiles = tl.num_programs(1)
    loss_part = 0.0
    w_part = 0.0
    if pid_j >= pid_i:
        rows = pid_i * BLOCK + tl.arange(0, BLOCK)
        cols = pid_j * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < B
        cmask = cols < B
        g = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        ni = tl.zeros((BLOCK,), dtype=tl.float32)
        nj = tl.zeros((BLOCK,), dtype=tl.float32)
        for d0 in range(0, D, BD):
            dd = d0 + tl.arange(0, BD)
            dmask = dd < D
            a = tl.load(E + rows[:, None].to(tl.int64) * stride_e + dd[None, :],
                        mask=rmask[:, None] & dmask[None, :], other=0.0)
            b = tl.load(E + cols[:, None].to(tl.int64) * stride_e + dd[None, :],
                        mask=cmask[:, None] & dmask[None, :], other=0.0)
            if IS_F32:
                g += tl.dot(a, tl.trans(b), input_precision="ieee")
            else:
                g += tl.dot(a, tl.trans(b))
            af = a.to(tl.float32)
            bf = b.to(tl.float32)
            ni += tl.sum(af * af, axis=1)
            nj += tl.sum(bf * bf, axis=1)
        nn = ni[:, None] + nj[None, :]
        d2 = nn - 2.0 * g
        d2 = tl.where(d2 > noise * nn, d2, 0.0)
        dist = tl.sqrt(d2)
        if TANH:
            x = dist * inv_scale
            pred = 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
            fprime = (1.0 - pred * pred) * inv_scale
        else:
            pred = dist
            fprime = tl.full((BLOCK, BLOCK), 1.0, dtype=tl.float32)
        valid = rmask[:, None] & cmask[None, :] & (rows[:, None] < cols[None, :])
        offs = rows[:, None].to(tl.int64) * B + cols[None, :]
        offs_t = cols[None, :].to(tl.int64) * B + rows[:, None]
        tgt = tl.load(T + offs, mask=valid, other=0.0).to(tl.float32)
        if HAS_W:
            w = tl.load(W + offs, mask=valid, other=0.0).to(tl.float32)
        else:
            w = tl.full((BLOCK, BLOCK), 1.0, dtype=tl.float32)
        valid = valid & (w != 0.0)
        tgt = tl.where(valid, tgt, 0.0)
        r = pred - tgt
        coef = tl.where(valid & (dist > 0.0), 2.0 * w * r * fprime / tl.where(dist > 0.0, dist, 1.0), 0.0)
        upper = rmask[:, None] & cmask[None, :] & (rows[:, None] < cols[None, :])
        tl.store(C + offs, coef, mask=upper)
        tl.store(C + offs_t, coef, mask=upper)
        tl.store(C + offs, tl.zeros((BLOCK, BLOCK), dtype=tl.float32),
                 mask=rmask[:, None] & cmask[None, :] & (rows[:, None] == cols[None, :]))
        loss_part = tl.sum(tl.sum(tl.where(valid, w * r * r, 0.0), axis=1), axis=0)
        w_part = tl.sum(tl.sum(tl.where(valid, w, 0.0), axis=1), axis=0)
    pid = pid_i * n_tiles + pid_j
    tl.store(P + 2 * pid, loss_part)
    tl.store(P + 2 * pid + 1, w_part)


@triton.jit
def _bwd_kernel(E, C, F, G, B, D, stride_e, stride_g, BLOCK: tl.constexpr, BD: tl.constexpr):
    pid_i = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_i * BLOCK + tl.arange(0, BLOCK)
    dd = pid_d * BD + tl.arange(0, BD)
    rmask = rows < B
    dmask = dd < D
    acc = tl.zeros((BLOCK, BD), dtype=tl.float32)
    s = tl.zeros((BLOCK,), dtype=tl.float32)
    for j0 in range(0, B, BLOCK):
        cols = j0 + tl.arange(0, BLOCK)
        cmask = cols < B
        c = tl.load(C + rows[:, None].to(tl.int64) * B + cols[None, :],
                    mask=rmask[:, None] & cmask[None, :], other=0.0)
        ej = tl.load(E + cols[:, None].to(tl.int64) * stride_e + dd[None, :],
                     mask=cmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        acc += tl.dot(c, ej, input_precision="ieee")
        s += tl.sum(c, axis=1)
    ei = tl.load(E + rows[:, None].to(tl.int64) * stride_e + dd[None, :],
                 mask=rmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
    f = tl.load(F)
    g = f * (s[:, None] * ei - acc)
    tl.store(G + rows[:, None].to(tl.int64) * stride_g + dd[None, :], g.to(G.dtype.element_ty),
             mask=rmask[:, None] & dmask[None, :])


def _centred(emb: torch.Tensor) -> torch.Tensor:
    """fp32: centred copy (exact distances, less Gram cancellation). fp16/bf16: unchanged, because
    rounding a centred copy back to 16 bits would perturb the inputs (their products are exact in the
    fp32 accumulation anyway)."""
    if emb.dtype != torch.float32:
        return emb.contiguous()
    return (emb - emb.mean(0, keepdim=True)).contiguous()


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Output allocation (tests replace it to poison outputs with NaN)."""
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def forward(emb: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, use_tanh: bool,
            scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss in emb.dtype, coef [B, B] fp32, denom fp32 0-d); target/weights fp32 contiguous [B, B]."""
    b, d = emb.shape
    coef = _empty((b, b), torch.float32, emb.device)
    if b < 2 or d == 0:
        coef.zero_()
        loss = torch.zeros((), dtype=emb.dtype, device=emb.device)
        return loss, coef, torch.zeros((), dtype=torch.float32, device=emb.device)
    e = _centred(emb)
    n_tiles = triton.cdiv(b, BLOCK)
    partials = _empty((n_tiles * n_tiles, 2), torch.float32, emb.device)
    _fwd_kernel[(n_tiles, n_tiles)](
        e, target, target if weights is None else weights, coef, partials, b, d, e.stride(0),
        1.0 / scale, NOISE, HAS_W=weights is not None, TANH=use_tanh, IS_F32=emb.dtype == torch.float32,
        BLOCK=BLOCK, BD=BD_FWD, num_warps=NUM_WARPS,
    )
    sums = partials.double().sum(0)
    lsum, wsum = sums[0], sums[1]
    loss = torch.where(wsum > 0, lsum / wsum.clamp_min(1e-300), torch.zeros_like(lsum))
    return loss.to(emb.dtype), coef, wsum.to(torch.float32)


def backward(grad: torch.Tensor, emb: torch.Tensor, coef: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """grad_emb = grad / denom * (diag(C 1) E - C E), in emb.dtype."""
    b, d = emb.shape
    out = _empty(emb.shape, emb.dtype, emb.device)
    if b < 2 or d == 0:
        return out.zero_()
    factor = torch.where(denom > 0, grad.float() / denom.float().clamp_min(1e-30), torch.zeros_like(denom))
    factor = factor.reshape(1).to(torch.float32).contiguous()
    e = _centred(emb)
    grid = (triton.cdiv(b, BLOCK), triton.cdiv(d, BD_BWD))
    _bwd_kernel[grid](e, coef, factor, out, b, d, e.stride(0), out.stride(0), BLOCK=BLOCK, BD=BD_BWD,
                      num_warps=NUM_WARPS)
    return out
