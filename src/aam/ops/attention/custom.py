"""The `custom` backend of masked attention: the compiled kernels, padded and varlen.

CPU: aam._C (OpenMP; fp32/fp64, fp16/bf16 upcast to fp32). CUDA/ROCm: aam._C_cuda / aam._C_hip
(fp32/fp16/bf16, head dims 16/32/64/128, as many queries as keys). No dropout.
Custom ops `aam::attention_fwd/bwd` and `aam::attention_varlen_fwd/bwd` with a CPU and a CUDA kernel each;
`_empty` allocates every output (tests replace it to poison outputs with NaN).
"""

from __future__ import annotations

import torch

from aam import native
from aam.ops.attention.opdefs import (
    BWD_SCHEMA,
    FWD_SCHEMA,
    GPU_HEAD_DIMS,
    fake_bwd,
    fake_varlen_bwd,
    kv_bounds,
    make_backward,
    make_varlen_backward,
    setup_ctx,
    varlen_setup,
)
from aam.ops.registry import KernelRequest

_HALF = (torch.float16, torch.bfloat16)


def _empty(shape, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """Output allocation of the compiled backends (tests replace it to poison outputs with NaN)."""
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def _s3(t: torch.Tensor) -> list[int]:
    return [t.stride(0), t.stride(1), t.stride(2)]


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _cpu_io_dtype(dtype: torch.dtype) -> torch.dtype:
    """What the CPU kernel reads and writes for inputs of `dtype`: bf16 as it is (computed in fp32), fp16 as
    fp32 (no fp16 path), fp32 and fp64 as they are."""
    return torch.float32 if dtype == torch.float16 else dtype


def _cpu_ready(t: torch.Tensor, io: torch.dtype) -> torch.Tensor:
    """`t` in the kernel's I/O dtype, last dim contiguous."""
    if t.dtype != io:
        t = t.to(io)
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
    dtype, io = q.dtype, _cpu_io_dtype(q.dtype)
    qc, kc, vc = _cpu_ready(q, io), _cpu_ready(k, io), _cpu_ready(v, io)
    n, h, lq, d = qc.shape
    out = _empty((n, h, lq, d), io)
    lse = _empty((n, h, lq), _lse_dtype(io))
    lens, m = _mask_args(lengths, mask)
    mod.attention_forward(native.dtype_code(qc), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), out.data_ptr(),
                          lse.data_ptr(), _ptr(lens), _ptr(m), 0 if m is None else m.stride(0), 0, n, h, lq,
                          kc.shape[2], d, _s3(qc), _s3(kc), _s3(vc), _s3(out), [lse.stride(0), lse.stride(1),
                          lse.stride(2)], float(scale))
    return out.to(dtype), lse


def _cpu_backward(dout, q, k, v, out, lse, lengths, mask, scale):
    mod = native.cpu_module()
    io = _cpu_io_dtype(q.dtype)
    qc, kc, vc, oc, gc = (_cpu_ready(t, io) for t in (q, k, v, out, dout))
    n, h, lq, d = qc.shape
    dq, dk, dv = _empty(qc.shape, io), _empty(kc.shape, io), _empty(vc.shape, io)
    lens, m = _mask_args(lengths, mask)
    mod.attention_backward(native.dtype_code(qc), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), oc.data_ptr(),
                           gc.data_ptr(), lse.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                           _ptr(lens), _ptr(m), 0 if m is None else m.stride(0), 0, n, h, lq, kc.shape[2], d,
                           _s3(qc), _s3(kc), _s3(vc), _s3(oc), _s3(gc), [lse.stride(0), lse.stride(1),
                           lse.stride(2)], _s3(dq), _s3(dk), _s3(dv), float(scale))
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


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


@torch.library.custom_op("aam::attention_fwd", mutates_args=(), device_types="cpu", schema=FWD_SCHEMA)
def _custom_fwd(q, k, v, key_lengths, key_padding_mask, scale):
    return _cpu_forward(q, k, v, key_lengths, key_padding_mask, scale)


@_custom_fwd.register_kernel("cuda")
def _custom_fwd_cuda(q, k, v, key_lengths, key_padding_mask, scale):
    return _gpu_forward(q, k, v, key_lengths, key_padding_mask, scale)


@torch.library.custom_op("aam::attention_bwd", mutates_args=(), device_types="cpu", schema=BWD_SCHEMA)
def _custom_bwd(dout, q, k, v, out, lse, key_lengths, key_padding_mask, scale):
    return _cpu_backward(dout, q, k, v, out, lse, key_lengths, key_padding_mask, scale)


@_custom_bwd.register_kernel("cuda")
def _custom_bwd_cuda(dout, q, k, v, out, lse, key_lengths, key_padding_mask, scale):
    return _gpu_backward(dout, q, k, v, out, lse, key_lengths, key_padding_mask, scale)


def _fake_fwd(q, k, v, key_lengths, key_padding_mask, scale):
    lse_dtype = _lse_dtype(q.dtype) if q.device.type == "cpu" else torch.float32
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=lse_dtype)


_custom_fwd.register_fake(_fake_fwd)
_custom_bwd.register_fake(fake_bwd)
_custom_fwd.register_autograd(make_backward(_custom_bwd), setup_context=setup_ctx)


def attention(q, k, v, mask, lengths, scale, dropout_p):
    return _custom_fwd(q, k, v, lengths, None if lengths is not None else mask, scale)[0]


def check(req: KernelRequest) -> str | None:
    if req.dropout_p > 0.0:
        return "no dropout in the custom kernels (use sdpa or math for attention dropout)"
    dev, dtype = req.device, req.dtype
    _, reason = native.module_with(dev, "attention_forward")
    if reason:
        return reason
    if dev.type == "cpu" and dtype not in (torch.float32, torch.float64, *_HALF):
        return f"dtype {dtype} not supported"
    if dev.type == "cuda":
        if dtype not in (torch.float32, *_HALF):
            return f"dtype {dtype} not supported on GPU (fp32/fp16/bf16)"
        if req.head_dim not in GPU_HEAD_DIMS:
            return f"head_dim {req.head_dim} not in {GPU_HEAD_DIMS}"
        if not req.same_len:
            return "GPU kernel needs as many queries as keys"
    return None


# ---- varlen -------------------------------------------------------------------------------------


def _cpu_varlen_forward(q, k, v, cu_seqlens, max_seqlen, scale):
    mod = native.cpu_module()
    io = _cpu_io_dtype(q.dtype)
    qc, kc, vc = _cpu_ready(q, io), _cpu_ready(k, io), _cpu_ready(v, io)
    t, h, d = qc.shape
    cu = cu_seqlens.to(torch.int64).contiguous()
    out = _empty((t, h, d), io)
    lse = _empty((t, h), _lse_dtype(io))

    def s(x):  # (n unused, h, token)
        return [0, x.stride(1), x.stride(0)]

    mod.attention_forward(native.dtype_code(qc), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), out.data_ptr(),
                          lse.data_ptr(), 0, 0, 0, cu.data_ptr(), cu.numel() - 1, h, max_seqlen, max_seqlen, d,
                          s(qc), s(kc), s(vc), s(out), [0, lse.stride(1), lse.stride(0)], float(scale))
    return out.to(q.dtype), lse


def _cpu_varlen_backward(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale, grads=None):
    """dq, dk, dv; `grads`, when given, are the three [T, H, Dh] (possibly strided) tensors to write them to."""
    mod = native.cpu_module()
    io = _cpu_io_dtype(q.dtype)
    qc, kc, vc, oc, gc = (_cpu_ready(x, io) for x in (q, k, v, out, dout))
    t, h, d = qc.shape
    cu = cu_seqlens.to(torch.int64).contiguous()
    dq, dk, dv = grads if grads is not None else (_empty(x.shape, io) for x in (qc, kc, vc))

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


_varlen_bwd.register_fake(fake_varlen_bwd)
_varlen_fwd.register_autograd(make_varlen_backward(_varlen_bwd), setup_context=varlen_setup)


def attention_varlen(q, k, v, cu_seqlens, max_seqlen, scale, dropout_p):
    return _varlen_fwd(q, k, v, cu_seqlens, max_seqlen, scale)[0]


# ---- varlen, q/k/v packed in one [T, 3, H, Dh] tensor (CPU) ---------------------------------------
# The kernel reads q, k and v as strided views of the qkv Linear's output and writes their gradients into one
# [T, 3, H, Dh] buffer: the backward needs no concatenation (the `stack` that unbind's backward would run).


@torch.library.custom_op(
    "aam::attention_varlen_qkv_fwd", mutates_args=(), device_types="cpu",
    schema="(Tensor qkv, Tensor cu_seqlens, int max_seqlen, float scale) -> (Tensor, Tensor)")
def _varlen_qkv_fwd(qkv, cu_seqlens, max_seqlen, scale):
    return _cpu_varlen_forward(*qkv.unbind(1), cu_seqlens, max_seqlen, scale)


@torch.library.custom_op(
    "aam::attention_varlen_qkv_bwd", mutates_args=(), device_types="cpu",
    schema="(Tensor dout, Tensor qkv, Tensor out, Tensor lse, Tensor cu_seqlens, int max_seqlen, float scale)"
           " -> Tensor")
def _varlen_qkv_bwd(dout, qkv, out, lse, cu_seqlens, max_seqlen, scale):
    dqkv = _empty(qkv.shape, _cpu_io_dtype(qkv.dtype))
    _cpu_varlen_backward(dout, *qkv.unbind(1), out, lse, cu_seqlens, max_seqlen, scale, grads=dqkv.unbind(1))
    return dqkv.to(qkv.dtype)


@_varlen_qkv_fwd.register_fake
def _(qkv, cu_seqlens, max_seqlen, scale):
    shape = (qkv.shape[0], qkv.shape[2], qkv.shape[3])
    return qkv.new_empty(shape), qkv.new_empty(shape[:2], dtype=_lse_dtype(qkv.dtype))


@_varlen_qkv_bwd.register_fake
def _(dout, qkv, out, lse, cu_seqlens, max_seqlen, scale):
    return qkv.new_empty(qkv.shape)


def _varlen_qkv_setup(ctx, inputs, output):
    qkv, cu_seqlens, max_seqlen, scale = inputs
    ctx.save_for_backward(qkv, output[0], output[1], cu_seqlens)
    ctx.max_seqlen, ctx.scale = max_seqlen, scale


def _varlen_qkv_backward(ctx, dout, dlse):
    qkv, out, lse, cu = ctx.saved_tensors
    return _varlen_qkv_bwd(dout, qkv, out, lse, cu, ctx.max_seqlen, ctx.scale), None, None, None


_varlen_qkv_fwd.register_autograd(_varlen_qkv_backward, setup_context=_varlen_qkv_setup)


def attention_varlen_qkv(qkv, cu_seqlens, max_seqlen, scale):
    return _varlen_qkv_fwd(qkv, cu_seqlens, max_seqlen, scale)[0]


def check_varlen(req: KernelRequest) -> str | None:
    """CPU (aam._C) and CUDA/ROCm (aam._C_cuda / _C_hip: fp32/fp16/bf16, head dims 16/32/64/128)."""
    reason = check(req)
    if reason is None and req.device.type == "cuda":
        _, reason = native.module_with(req.device, "attention_varlen_forward")
    return reason
