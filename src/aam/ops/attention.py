"""Masked attention with key padding: softmax(q k^T * scale, keys masked) v, per head.

Contract on every backend: a query whose keys are all padding yields exactly 0 output and 0 gradient.
Backends register in aam.ops.registry under the op names "masked_attention" and
"masked_attention_varlen":

| backend | devices | dtypes | dropout | varlen |
|---|---|---|---|---|
| custom  | CPU (aam._C, OpenMP), CUDA/ROCm (aam._C_cuda / _C_hip, Dh 16/32/64/128) | fp32/fp16/bf16 (+fp64 CPU) | no | yes |
| triton  | CUDA/ROCm; CPU only under TRITON_INTERPRET=1 (tests) | fp32/fp16/bf16 | no | yes |
| sdpa    | any (torch SDPA; self-checked against math on ROCm before `auto` trusts it) | any | yes | no |
| math    | any (plain torch, float64-capable reference) | any | yes | yes (pads/unpads) |

Compiled and Triton backends are `torch.library.custom_op`s (`aam::attention_fwd`, `aam::attention_bwd`,
`aam::attention_varlen_fwd/bwd`, `aam::attention_triton_fwd/bwd`,
`aam::attention_triton_varlen_fwd/bwd`) with fake and autograd registrations,
so they work under autograd, torch.compile and opcheck.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from aam import native
from aam.errors import BackendUnavailable
from aam.ops import registry

OP = "masked_attention"
OP_VARLEN = "masked_attention_varlen"
GPU_HEAD_DIMS = (16, 32, 64, 128)
_HALF = (torch.float16, torch.bfloat16)


# ---- math ---------------------------------------------------------------------------------------


def attention_math(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
    scale: float, dropout_p: float,
) -> torch.Tensor:
    """Plain-torch reference in the input dtype. key_padding_mask [N, L] is True at padded keys."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if key_padding_mask is None:
        probs = torch.softmax(scores, dim=-1)
    else:
        pad = key_padding_mask[:, None, None, :]
        probs = torch.softmax(scores.masked_fill(pad, torch.finfo(scores.dtype).min), dim=-1)
        has_key = ~key_padding_mask.all(dim=-1)
        probs = probs * has_key[:, None, None, None].to(probs.dtype)
    if dropout_p > 0.0:
        probs = torch.nn.functional.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)


def lengths_to_padding_mask(key_lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[N] lengths -> [N, max_len] bool mask, True at padded keys."""
    return torch.arange(max_len, device=key_lengths.device)[None, :] >= key_lengths[:, None]


def _math(q, k, v, mask, lengths, scale, dropout_p):
    if mask is None and lengths is not None:
        mask = lengths_to_padding_mask(lengths, k.shape[-2])
    return attention_math(q, k, v, mask, scale, dropout_p)


# ---- sdpa ---------------------------------------------------------------------------------------


def _sdpa(q, k, v, mask, lengths, scale, dropout_p):
    """torch SDPA with a bool attn_mask; rows without a valid key see key 0 unmasked, then output 0."""
    if mask is None and lengths is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    if mask is None:
        mask = lengths_to_padding_mask(lengths, k.shape[-2])
    empty = mask.all(dim=-1)  # [N]
    first = torch.zeros_like(mask)
    first[:, :1] = True
    attend = ~mask | (first & empty[:, None])  # never a row of all False: no NaN in SDPA's softmax
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend[:, None, None, :], dropout_p=dropout_p,
                                         scale=scale)
    return out.masked_fill(empty[:, None, None, None], 0.0)


def _check_sdpa(req: registry.Request) -> str | None:
    return None


def _sdpa_self_check(device: torch.device) -> str | None:
    """On ROCm, SDPA's masked paths have returned wrong results: compare with math before trusting it."""
    if device.type != "cuda" or not torch.version.hip:
        return None
    # Calls the SDPA implementation directly: dispatching here would re-enter this self-check.
    def run(q, k, v, mask):
        return _sdpa(q, k, v, mask, None, 1.0 / math.sqrt(q.shape[-1]), 0.0)

    res = _combine([_check_one(run, device, dt) for dt in (torch.float32, torch.float16, torch.bfloat16)])
    return None if res["ok"] else f"self-check against math failed ({res['detail']})"


# ---- custom (compiled) --------------------------------------------------------------------------


def _empty(shape, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """Output allocation of the compiled backends (tests replace it to poison outputs with NaN)."""
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def _s3(t: torch.Tensor) -> list[int]:
    return [t.stride(0), t.stride(1), t.stride(2)]


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _cpu_ready(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32 on the CPU; last dim contiguous."""
    if t.dtype in _HALF:
        t = t.float()
    return t if t.stride(-1) == 1 else t.contiguous()


def _mask_args(lengths, mask):
    """(lengths int64 or None, mask uint8 contiguous or None) kept alive by the caller."""
    if lengths is not None:
        return lengths.to(torch.int64).contiguous(), None
    if mask is not None:
        return None, mask.contiguous().view(torch.uint8)
    return None, None


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _cpu_forward(q, k, v, lengths, mask, scale):
    mod = native.cpu_module()
    dtype = q.dtype
    qc, kc, vc = _cpu_ready(q), _cpu_ready(k), _cpu_ready(v)
    n, h, lq, d = qc.shape
    out = _empty((n, h, lq, d), qc.dtype)
    lse = _empty((n, h, lq), qc.dtype)
    lens, m = _mask_args(lengths, mask)
    mod.attention_forward(native.dtype_code(qc), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), out.data_ptr(),
                          lse.data_ptr(), _ptr(lens), _ptr(m), 0 if m is None else m.stride(0), 0, n, h, lq,
                          kc.shape[2], d, _s3(qc), _s3(kc), _s3(vc), _s3(out), [lse.stride(0), lse.stride(1),
                          lse.stride(2)], float(scale))
    return out.to(dtype), lse


def _cpu_backward(dout, q, k, v, out, lse, lengths, mask, scale):
    mod = native.cpu_module()
    qc, kc, vc, oc, gc = (_cpu_ready(t) for t in (q, k, v, out, dout))
    n, h, lq, d = qc.shape
    dq = _empty(qc.shape, qc.dtype)
    dk = _empty(kc.shape, qc.dtype)
    dv = _empty(vc.shape, qc.dtype)
    lens, m = _mask_args(lengths, mask)
    mod.attention_backward(native.dtype_code(qc), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), oc.data_ptr(),
                           gc.data_ptr(), lse.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                           _ptr(lens), _ptr(m), 0 if m is None else m.stride(0), 0, n, h, lq, kc.shape[2], d,
                           _s3(qc), _s3(kc), _s3(vc), _s3(oc), _s3(gc), [lse.stride(0), lse.stride(1),
                           lse.stride(2)], _s3(dq), _s3(dk), _s3(dv), float(scale))
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def kv_bounds(lengths: torch.Tensor | None, mask: torch.Tensor | None, n: int, lk: int,
              device: torch.device) -> torch.Tensor:
    """int32 [N]: one past the last valid key of each row (no host sync), for the GPU kernels."""
    if lengths is not None:
        return lengths.clamp(0, lk).to(torch.int32).contiguous()
    if mask is not None:
        pos = torch.arange(1, lk + 1, device=device, dtype=torch.int32)
        return (pos[None, :] * (~mask).to(torch.int32)).amax(dim=-1).to(torch.int32).contiguous()
    return torch.full((n,), lk, dtype=torch.int32, device=device)


def _gpu_forward(q, k, v, lengths, mask, scale):
    mod = native.gpu_module()
    qc, kc, vc = q.contiguous(), k.contiguous(), v.contiguous()
    n, h, seq, d = qc.shape
    out = _empty(qc.shape, qc.dtype, q.device)
    lse = _empty((n, h, seq), torch.float32, q.device)
    bound = kv_bounds(lengths, mask, n, seq, q.device)
    m = None if mask is None else mask.contiguous().view(torch.uint8)
    mod.attention_forward(native.dtype_code(qc), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), out.data_ptr(),
                          lse.data_ptr(), bound.data_ptr(), _ptr(m), n, h, seq, d, float(scale),
                          native.stream_handle(q.device))
    return out, lse


def _gpu_backward(dout, q, k, v, out, lse, lengths, mask, scale):
    mod = native.gpu_module()
    qc, kc, vc, oc, gc = (t.contiguous() for t in (q, k, v, out, dout))
    n, h, seq, d = qc.shape
    dq, dk, dv = (_empty(x.shape, x.dtype, x.device) for x in (qc, kc, vc))
    delta = torch.empty((n, h, seq), dtype=torch.float32, device=q.device)
    bound = kv_bounds(lengths, mask, n, seq, q.device)
    m = None if mask is None else mask.contiguous().view(torch.uint8)
    mod.attention_backward(native.dtype_code(qc), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), oc.data_ptr(),
                           gc.data_ptr(), lse.contiguous().data_ptr(), delta.data_ptr(), dq.data_ptr(),
                           dk.data_ptr(), dv.data_ptr(), bound.data_ptr(), _ptr(m), n, h, seq, d, float(scale),
                           native.stream_handle(q.device))
    return dq, dk, dv


_FWD_SCHEMA = ("(Tensor q, Tensor k, Tensor v, Tensor? key_lengths, Tensor? key_padding_mask, float scale)"
               " -> (Tensor, Tensor)")
_BWD_SCHEMA = ("(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? key_lengths,"
               " Tensor? key_padding_mask, float scale) -> (Tensor, Tensor, Tensor)")


@torch.library.custom_op("aam::attention_fwd", mutates_args=(), device_types="cpu", schema=_FWD_SCHEMA)
def _custom_fwd(q, k, v, key_lengths, key_padding_mask, scale):
    return _cpu_forward(q, k, v, key_lengths, key_padding_mask, scale)


@_custom_fwd.register_kernel("cuda")
def _custom_fwd_cuda(q, k, v, key_lengths, key_padding_mask, scale):
    return _gpu_forward(q, k, v, key_lengths, key_padding_mask, scale)


@torch.library.custom_op("aam::attention_bwd", mutates_args=(), device_types="cpu", schema=_BWD_SCHEMA)
def _custom_bwd(dout, q, k, v, out, lse, key_lengths, key_padding_mask, scale):
    return _cpu_backward(dout, q, k, v, out, lse, key_lengths, key_padding_mask, scale)


@_custom_bwd.register_kernel("cuda")
def _custom_bwd_cuda(dout, q, k, v, out, lse, key_lengths, key_padding_mask, scale):
    return _gpu_backward(dout, q, k, v, out, lse, key_lengths, key_padding_mask, scale)


def _fake_fwd(q, k, v, key_lengths, key_padding_mask, scale):
    lse_dtype = _lse_dtype(q.dtype) if q.device.type == "cpu" else torch.float32
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=lse_dtype)


def _fake_bwd(dout, q, k, v, out, lse, key_lengths, key_padding_mask, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_ctx(ctx, inputs, output):
    q, k, v, key_lengths, key_padding_mask, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_lengths, key_padding_mask)
    ctx.scale = scale


def _make_backward(bwd_op):
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, key_lengths, key_padding_mask = ctx.saved_tensors
        dq, dk, dv = bwd_op(dout, q, k, v, out, lse, key_lengths, key_padding_mask, ctx.scale)
        return dq, dk, dv, None, None, None

    return backward


_custom_fwd.register_fake(_fake_fwd)
_custom_bwd.register_fake(_fake_bwd)
_custom_fwd.register_autograd(_make_backward(_custom_bwd), setup_context=_setup_ctx)


def _custom(q, k, v, mask, lengths, scale, dropout_p):
    return _custom_fwd(q, k, v, lengths, None if lengths is not None else mask, scale)[0]


def _check_custom(req: registry.Request) -> str | None:
    if req.get("dropout_p", 0.0) > 0.0:
        return "no dropout in the custom kernels (use sdpa or math for attention dropout)"
    dev, dtype = req["device"], req["dtype"]
    _, reason = native.module_with(dev, "attention_forward")
    if reason:
        return reason
    if dev.type == "cpu" and dtype not in (torch.float32, torch.float64, *_HALF):
        return f"dtype {dtype} not supported"
    if dev.type == "cuda":
        if dtype not in (torch.float32, *_HALF):
            return f"dtype {dtype} not supported on GPU (fp32/fp16/bf16)"
        if req.get("head_dim") not in GPU_HEAD_DIMS:
            return f"head_dim {req.get('head_dim')} not in {GPU_HEAD_DIMS}"
        if not req.get("same_len", req.get("q_len", req.get("seq_len")) == req.get("seq_len")):
            return "GPU kernel needs as many queries as keys"
    return None


# ---- custom varlen (CPU, CUDA/ROCm) ------------------------------------------------------------


def _cpu_varlen_forward(q, k, v, cu_seqlens, max_seqlen, scale):
    mod = native.cpu_module()
    qc, kc, vc = _cpu_ready(q), _cpu_ready(k), _cpu_ready(v)
    t, h, d = qc.shape
    cu = cu_seqlens.to(torch.int64).contiguous()
    out = _empty((t, h, d), qc.dtype)
    lse = _empty((t, h), qc.dtype)

    def s(x):  # (n unused, h, token)
        return [0, x.stride(1), x.stride(0)]

    mod.attention_forward(native.dtype_code(qc), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), out.data_ptr(),
                          lse.data_ptr(), 0, 0, 0, cu.data_ptr(), cu.numel() - 1, h, max_seqlen, max_seqlen, d,
                          s(qc), s(kc), s(vc), s(out), [0, lse.stride(1), lse.stride(0)], float(scale))
    return out.to(q.dtype), lse


def _cpu_varlen_backward(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    mod = native.cpu_module()
    qc, kc, vc, oc, gc = (_cpu_ready(x) for x in (q, k, v, out, dout))
    t, h, d = qc.shape
    cu = cu_seqlens.to(torch.int64).contiguous()
    dq = _empty(qc.shape, qc.dtype)
    dk = _empty(kc.shape, qc.dtype)
    dv = _empty(vc.shape, qc.dtype)

    def s(x):
        return [0, x.stride(1), x.stride(0)]

    mod.attention_backward(native.dtype_code(qc), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), oc.data_ptr(),
                           gc.data_ptr(), lse.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), 0, 0, 0,
                           cu.data_ptr(), cu.numel() - 1, h, max_seqlen, max_seqlen, d, s(qc), s(kc), s(vc),
                           s(oc), s(gc), [0, lse.stride(1), lse.stride(0)], s(dq), s(dk), s(dv), float(scale))
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _gpu_varlen_forward(q, k, v, cu_seqlens, max_seqlen, scale):
    mod = native.gpu_module()
    qc, kc, vc = q.contiguous(), k.contiguous(), v.contiguous()
    t, h, d = qc.shape
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    out = _empty((t, h, d), qc.dtype, q.device)
    lse = _empty((t, h), torch.float32, q.device)
    mod.attention_varlen_forward(native.dtype_code(qc), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), out.data_ptr(),
                                 lse.data_ptr(), cu.data_ptr(), t, cu.numel() - 1, h, int(max_seqlen), d,
                                 float(scale), native.stream_handle(q.device))
    return out, lse


def _gpu_varlen_backward(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    mod = native.gpu_module()
    qc, kc, vc, oc, gc = (x.contiguous() for x in (q, k, v, out, dout))
    t, h, d = qc.shape
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    dq, dk, dv = (_empty(x.shape, x.dtype, x.device) for x in (qc, kc, vc))
    delta = torch.empty((t, h), dtype=torch.float32, device=q.device)
    mod.attention_varlen_backward(native.dtype_code(qc), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), oc.data_ptr(),
                                  gc.data_ptr(), lse.contiguous().data_ptr(), delta.data_ptr(), dq.data_ptr(),
                                  dk.data_ptr(), dv.data_ptr(), cu.data_ptr(), t, cu.numel() - 1, h, int(max_seqlen),
                                  d, float(scale), native.stream_handle(q.device))
    return dq, dk, dv


@torch.library.custom_op(
    "aam::attention_varlen_fwd", mutates_args=(), device_types="cpu",
    schema="(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, int max_seqlen, float scale) -> (Tensor, Tensor)")
def _varlen_fwd(q, k, v, cu_seqlens, max_seqlen, scale):
    return _cpu_varlen_forward(q, k, v, cu_seqlens, max_seqlen, scale)


@_varlen_fwd.register_kernel("cuda")
def _varlen_fwd_cuda(q, k, v, cu_seqlens, max_seqlen, scale):
    return _gpu_varlen_forward(q, k, v, cu_seqlens, max_seqlen, scale)


@torch.library.custom_op(
    "aam::attention_varlen_bwd", mutates_args=(), device_types="cpu",
    schema="(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor cu_seqlens,"
           " int max_seqlen, float scale) -> (Tensor, Tensor, Tensor)")
def _varlen_bwd(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    return _cpu_varlen_backward(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale)


@_varlen_bwd.register_kernel("cuda")
def _varlen_bwd_cuda(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    return _gpu_varlen_backward(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale)


@_varlen_fwd.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:2], dtype=_lse_dtype(q.dtype))


def _fake_varlen_bwd(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _varlen_setup(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], cu_seqlens)
    ctx.max_seqlen, ctx.scale = max_seqlen, scale


def _make_varlen_backward(bwd_op):
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, cu = ctx.saved_tensors
        dq, dk, dv = bwd_op(dout, q, k, v, out, lse, cu, ctx.max_seqlen, ctx.scale)
        return dq, dk, dv, None, None, None

    return backward


_varlen_bwd.register_fake(_fake_varlen_bwd)
_varlen_fwd.register_autograd(_make_varlen_backward(_varlen_bwd), setup_context=_varlen_setup)


def _varlen_custom(q, k, v, cu_seqlens, max_seqlen, scale, dropout_p):
    return _varlen_fwd(q, k, v, cu_seqlens, max_seqlen, scale)[0]


def _varlen_math(q, k, v, cu_seqlens, max_seqlen, scale, dropout_p):
    """Pads to [B, H, max_seqlen, Dh], runs math, unpads (differentiable)."""
    b = cu_seqlens.numel() - 1
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    seq = torch.repeat_interleave(torch.arange(b, device=q.device), lengths)
    pos = torch.arange(q.shape[0], device=q.device) - cu_seqlens.to(torch.int64)[seq]

    def pad(x):
        out = x.new_zeros((b, max_seqlen) + tuple(x.shape[1:]))
        out = out.index_put((seq, pos), x)
        return out.transpose(1, 2)

    mask = lengths_to_padding_mask(lengths, max_seqlen)
    out = attention_math(pad(q), pad(k), pad(v), mask, scale, dropout_p)
    return out.transpose(1, 2)[seq, pos]


def _check_varlen_custom(req: registry.Request) -> str | None:
    """CPU (aam._C) and CUDA/ROCm (aam._C_cuda / _C_hip: fp32/fp16/bf16, head dims 16/32/64/128)."""
    reason = _check_custom(req)
    if reason is None and req["device"].type == "cuda":
        _, reason = native.module_with(req["device"], "attention_varlen_forward")
    return reason


# ---- triton -------------------------------------------------------------------------------------


def _triton_mod():
    from aam.kernels import attention as tk  # lazy: imports triton

    return tk


@torch.library.custom_op("aam::attention_triton_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def _triton_fwd(q, k, v, key_lengths, key_padding_mask, scale):
    n, _, seq, _ = q.shape
    bound = kv_bounds(key_lengths, key_padding_mask, n, k.shape[2], q.device)
    mask = key_padding_mask if key_lengths is None else None
    return _triton_mod().attention_forward(q, k, v, bound, mask, scale)


@torch.library.custom_op("aam::attention_triton_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def _triton_bwd(dout, q, k, v, out, lse, key_lengths, key_padding_mask, scale):
    n = q.shape[0]
    bound = kv_bounds(key_lengths, key_padding_mask, n, k.shape[2], q.device)
    mask = key_padding_mask if key_lengths is None else None
    return _triton_mod().attention_backward(dout, q, k, v, out, lse, bound, mask, scale)


@_triton_fwd.register_fake
def _(q, k, v, key_lengths, key_padding_mask, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


_triton_bwd.register_fake(_fake_bwd)
_triton_fwd.register_autograd(_make_backward(_triton_bwd), setup_context=_setup_ctx)


def _triton(q, k, v, mask, lengths, scale, dropout_p):
    return _triton_fwd(q, k, v, lengths, None if lengths is not None else mask, scale)[0]


def _check_triton(req: registry.Request) -> str | None:
    if req.get("dropout_p", 0.0) > 0.0:
        return "no dropout in the triton kernel (use sdpa or math for attention dropout)"
    dev = req["device"]
    if dev.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "triton runs on GPUs; on the CPU only under TRITON_INTERPRET=1 (tests)"
    if dev.type not in ("cpu", "cuda"):
        return f"no triton kernel for device type {dev.type}"
    ok, why = native.has_triton()
    if not ok:
        return why
    if req["dtype"] not in (torch.float32, *_HALF):
        return f"dtype {req['dtype']} not supported (fp32/fp16/bf16)"
    if dev.type == "cpu" and req["dtype"] == torch.bfloat16:
        return "the Triton interpreter mishandles bfloat16 (runs on GPUs)"
    if req.get("head_dim") not in GPU_HEAD_DIMS:
        return f"head_dim {req.get('head_dim')} not in {GPU_HEAD_DIMS}"
    return None


# ---- triton varlen ------------------------------------------------------------------------------

_VARLEN_FWD_SCHEMA = "(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, int max_seqlen, float scale) -> (Tensor, Tensor)"
_VARLEN_BWD_SCHEMA = ("(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor cu_seqlens,"
                      " int max_seqlen, float scale) -> (Tensor, Tensor, Tensor)")


@torch.library.custom_op("aam::attention_triton_varlen_fwd", mutates_args=(), schema=_VARLEN_FWD_SCHEMA)
def _triton_varlen_fwd(q, k, v, cu_seqlens, max_seqlen, scale):
    return _triton_mod().attention_varlen_forward(q, k, v, cu_seqlens, max_seqlen, scale)


@torch.library.custom_op("aam::attention_triton_varlen_bwd", mutates_args=(), schema=_VARLEN_BWD_SCHEMA)
def _triton_varlen_bwd(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    return _triton_mod().attention_varlen_backward(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale)


@_triton_varlen_fwd.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:2], dtype=torch.float32)


_triton_varlen_bwd.register_fake(_fake_varlen_bwd)
_triton_varlen_fwd.register_autograd(_make_varlen_backward(_triton_varlen_bwd), setup_context=_varlen_setup)


def _varlen_triton(q, k, v, cu_seqlens, max_seqlen, scale, dropout_p):
    return _triton_varlen_fwd(q, k, v, cu_seqlens, max_seqlen, scale)[0]




# ---- registration and dispatch ------------------------------------------------------------------

# CPU: custom vs SDPA fwd+bwd, measured with benchmarks/bench_attention.py and dense runs (2 cores, H=4,
# Dh=32): custom is 1.3-2x faster on padded batches at every shape and 1.5-1.7x on dense rows up to
# L=256; on dense rows of L=1024 the two tie (1.06x, 0.78x before the backward GEMM blocking), so
# `auto` leaves long unmasked rows to SDPA's blocked GEMMs.
CPU_CUSTOM_MAX_DENSE_LEN = 512


def _auto_skips_custom(req: registry.Request) -> str | None:
    """`auto` leaves long unpadded rows on the CPU to SDPA (an explicit `custom` still runs them)."""
    if req["device"].type == "cpu" and not req.get("padded", True) \
            and req.get("long_rows", req.get("seq_len", 0) > CPU_CUSTOM_MAX_DENSE_LEN):
        return f"sdpa is as fast on the CPU for unpadded rows longer than {CPU_CUSTOM_MAX_DENSE_LEN}"
    return None


registry.register(OP, "math", _math, lambda req: None, priority=0)
registry.register(OP, "sdpa", _sdpa, _check_sdpa, priority=10, self_check=_sdpa_self_check)
registry.register(OP, "custom", _custom, _check_custom, priority=20, auto_refusal=_auto_skips_custom)
registry.register(OP, "triton", _triton, _check_triton, priority=30, auto_refusal=registry.auto_skips_triton_interpreter)
registry.register(OP_VARLEN, "math", _varlen_math, lambda req: None, priority=0)
registry.register(OP_VARLEN, "custom", _varlen_custom, _check_varlen_custom, priority=20)
registry.register(OP_VARLEN, "triton", _varlen_triton, _check_triton, priority=30,
                  auto_refusal=registry.auto_skips_triton_interpreter)

_IMPLS = {(b.op, b.name): b.fn for op in (OP, OP_VARLEN) for b in registry.backends(op)}


@torch.compiler.assume_constant_result
def _select_name(op: str, requested: str, device_type: str, dtype: str, head_dim: int, long_rows: bool,
                 same_len: bool, dropout: float, padded: bool) -> str:
    """Backend name for a request; a constant under torch.compile (runs once at trace time).

    Every argument is a plain constant (shapes enter only as the facts dispatch needs), so a graph
    with dynamic sequence lengths still traces without a break.
    """
    req = {"device": torch.device(device_type), "dtype": getattr(torch, dtype), "head_dim": head_dim,
           "long_rows": long_rows, "same_len": same_len, "dropout_p": dropout, "padded": padded}
    return registry.select(op, registry.resolve_name(op, requested), req).name


def _head_dim_const(dim) -> int:
    """The head dim as a Python int; under torch.compile a symbolic size is specialised to one of the
    kernel sizes (or -1: any other size) through guards instead of reaching dispatch as a SymInt."""
    if not torch.compiler.is_compiling():
        return int(dim)
    for size in GPU_HEAD_DIMS:
        if dim == size:
            return size
    return -1


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    key_lengths: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """q, k, v [N, H, L, Dh] -> [N, H, L, Dh]. Give key_padding_mask [N, L] (True at padding) or key_lengths [N].

    A query whose keys are all padding gets output 0 and gradient 0 on every backend.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"masked_attention: q, k, v must be [N, H, L, Dh]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"masked_attention: shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if key_padding_mask is not None:
        if key_padding_mask.shape != (k.shape[0], k.shape[2]):
            raise ValueError(f"masked_attention: key_padding_mask must be [N, L] = {(k.shape[0], k.shape[2])}, "
                             f"got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.dtype != torch.bool:
            key_padding_mask = key_padding_mask.to(torch.bool)
        key_lengths = None
    elif key_lengths is not None and key_lengths.shape != (k.shape[0],):
        raise ValueError(f"masked_attention: key_lengths must be [N] = [{k.shape[0]}], got "
                         f"{tuple(key_lengths.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    padded = key_padding_mask is not None or key_lengths is not None
    long_rows = True if k.shape[2] > CPU_CUSTOM_MAX_DENSE_LEN else False  # a guarded Python bool, never a SymBool
    same_len = True if q.shape[2] == k.shape[2] else False
    name = _select_name(OP, backend, q.device.type, _dtype_name(q.dtype), _head_dim_const(q.shape[-1]), long_rows,
                        same_len, float(dropout_p), padded)
    return _IMPLS[(OP, name)](q, k, v, key_padding_mask, key_lengths, scale, dropout_p)


def masked_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Packed variable-length attention: q, k, v [T, H, Dh]; sequence b owns tokens cu_seqlens[b]:cu_seqlens[b+1].

    Each sequence attends within itself; no padding is stored or computed. Backends: custom (CPU, CUDA/ROCm), triton (GPU), math.
    """
    if q.dim() != 3 or q.shape != k.shape or k.shape != v.shape:
        raise ValueError(f"masked_attention_varlen: q, k, v must be [T, H, Dh] of one shape; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError("masked_attention_varlen: cu_seqlens must be a 1-D tensor [B + 1] of offsets")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    long_rows = True if max_seqlen > CPU_CUSTOM_MAX_DENSE_LEN else False
    name = _select_name(OP_VARLEN, backend, q.device.type, _dtype_name(q.dtype), _head_dim_const(q.shape[-1]),
                        long_rows, True, float(dropout_p), True)
    return _IMPLS[(OP_VARLEN, name)](q, k, v, cu_seqlens, max_seqlen, scale, dropout_p)


def packed_backend(requested: str, device: torch.device, dtype: torch.dtype, head_dim: int, dropout_p: float,
                   max_seqlen: int) -> str | None:
    """The varlen backend a model should pack its tokens for, or None to keep the padded op.

    Packing pays only with a varlen kernel: the math varlen form pads and unpads around padded math.
    `requested` is the run-wide `--kernels` choice; a choice the varlen op does not have (sdpa), or
    one that has no varlen kernel for this request, keeps the padded op, which then runs (or explains
    why it cannot) as usual.
    """
    if requested == "math" or (requested != "auto" and requested not in {b.name for b in registry.backends(OP_VARLEN)}):
        return None
    try:
        name = _select_name(OP_VARLEN, requested, device.type, _dtype_name(dtype), _head_dim_const(head_dim),
                            max_seqlen > CPU_CUSTOM_MAX_DENSE_LEN, True, float(dropout_p), True)
    except BackendUnavailable:
        return None
    return None if name == "math" else name


# ---- self-check (aam kernels) -------------------------------------------------------------------


def _random_case(device: torch.device, n: int = 5, h: int = 2, seq: int = 37, d: int = 32):
    g = torch.Generator().manual_seed(1234)
    q, k, v = (torch.randn(n, h, seq, d, generator=g, dtype=torch.float64) for _ in range(3))
    lengths = torch.tensor([seq, 1, 0, seq // 2, 7][:n], dtype=torch.int64)
    mask = lengths_to_padding_mask(lengths, seq)
    mask[3, 2] = True  # one non-prefix mask row
    return [t.to(device) for t in (q, k, v)], mask.to(device)


_TOLS = {torch.float32: (1e-4, 1e-3), torch.float16: (2e-2, 5e-2), torch.bfloat16: (1e-1, 2e-1),
         torch.float64: (1e-9, 1e-8)}


def _check_one(fn, device: torch.device, dtype: torch.dtype) -> dict:
    """Run fn(q, k, v, mask) on the random case in `dtype`; errors vs float64 math, NaN, exact-zero rows."""
    (q, k, v), mask = _random_case(device)
    ref_inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = attention_math(*ref_inputs, mask, 1.0 / math.sqrt(q.shape[-1]), 0.0)
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=ref.dtype).to(device)
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad_out)
    inputs = [t.to(dtype).clone().requires_grad_(True) for t in (q, k, v)]
    out = fn(*inputs, mask)
    grads = torch.autograd.grad(out, inputs, grad_out.to(dtype))
    nan = bool(torch.isnan(out).any()) or any(bool(torch.isnan(g).any()) for g in grads)
    err_f = (out.double() - ref).abs().max().item()
    err_b = max((g.double() - r).abs().max().item() for g, r in zip(grads, ref_grads, strict=True))
    tol_f, tol_b = _TOLS[dtype]
    empty = mask.all(-1)
    exact_zero = bool((out[empty] == 0).all()) and bool((grads[0][empty] == 0).all())
    ok = not nan and err_f <= tol_f and err_b <= tol_b and exact_zero
    detail = f"{_dtype_name(dtype)}: max err fwd {err_f:.2e} (tol {tol_f:.0e}), bwd {err_b:.2e} (tol {tol_b:.0e})"
    if nan:
        detail += ", NaN in output or gradient"
    if not exact_zero:
        detail += ", fully padded row not exactly 0"
    return {"ok": ok, "max_err_fwd": err_f, "max_err_bwd": err_b, "tol_fwd": tol_f, "tol_bwd": tol_b,
            "nan": nan, "detail": detail}


def _combine(results: list[dict]) -> dict:
    worst = max(results, key=lambda r: r["max_err_fwd"] / r["tol_fwd"])
    return {**worst, "ok": all(r["ok"] for r in results), "nan": any(r["nan"] for r in results),
            "max_err_bwd": max(r["max_err_bwd"] for r in results),
            "detail": "; ".join(r["detail"] for r in results)}


def self_check(backend: str, device: torch.device | str, dtype: torch.dtype | None = None) -> dict:
    """Random masked case (fully padded row, length-1 row, a hole in a mask) vs float64 math.

    dtype None checks float32, plus bfloat16 on GPUs (when the backend takes it).
    Returns {"ok", "max_err_fwd", "max_err_bwd", "tol_fwd", "tol_bwd", "nan", "detail"}.
    """
    device = torch.device(device)
    dtypes = [dtype] if dtype is not None else (
        [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32])
    results = []
    for dt in dtypes:
        req = {"device": device, "dtype": dt, "head_dim": 32, "long_rows": False, "same_len": True,
               "dropout_p": 0.0}
        if dtype is None and dt != torch.float32 and backend != "auto" \
                and _backend_check(backend, req) is not None:
            continue  # the backend does not take this dtype here; the table says so

        def run(q, k, v, mask):
            return masked_attention(q, k, v, key_padding_mask=mask, backend=backend)

        results.append(_check_one(run, device, dt))
    return _combine(results)


def _backend_check(name: str, req: registry.Request) -> str | None:
    for b in registry.backends(OP):
        if b.name == name:
            return b.check(req)
    return f"no backend {name}"


def self_check_masked_attention_varlen(backend: str, device: torch.device | str,
                                       dtype: torch.dtype = torch.float32) -> dict:
    """Packed sequences (one of length 0 and one of length 1) vs float64 padded math."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(99)
    lengths = torch.tensor([5, 0, 1, 13])
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(device)
    t = int(lengths.sum())
    q, k, v = (torch.randn(t, 2, 16, generator=g, dtype=torch.float64).to(device) for _ in range(3))
    ref_in = [x.clone().requires_grad_(True) for x in (q, k, v)]
    ref = _varlen_math(*ref_in, cu, 13, 0.25, 0.0)
    go = torch.randn_like(ref)
    ref_g = torch.autograd.grad(ref, ref_in, go)
    inp = [x.to(dtype).clone().requires_grad_(True) for x in (q, k, v)]
    out = masked_attention_varlen(*inp, cu, 13, scale=0.25, backend=backend)
    grads = torch.autograd.grad(out, inp, go.to(dtype))
    nan = bool(torch.isnan(out).any()) or any(bool(torch.isnan(x).any()) for x in grads)
    err_f = (out.double() - ref).abs().max().item()
    err_b = max((x.double() - r).abs().max().item() for x, r in zip(grads, ref_g, strict=True))
    tol_f, tol_b = (1e-4, 1e-3) if dtype == torch.float32 else (5e-2, 1e-1)
    ok = not nan and err_f <= tol_f and err_b <= tol_b
    return {"ok": ok, "max_err_fwd": err_f, "max_err_bwd": err_b, "tol_fwd": tol_f, "tol_bwd": tol_b,
            "nan": nan, "detail": f"max err fwd {err_f:.2e}, bwd {err_b:.2e}" + (", NaN" if nan else "")}
