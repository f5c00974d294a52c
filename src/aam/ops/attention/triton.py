"""The `triton` backend of masked attention: aam.kernels.attention, padded and varlen.

CUDA/ROCm (fp32/fp16/bf16, head dims 16/32/64/128); on the CPU only under TRITON_INTERPRET=1 (tests;
`auto` never takes it there, and the interpreter mishandles bf16). No dropout. Custom ops
`aam::attention_triton_fwd/bwd` and `aam::attention_triton_varlen_fwd/bwd`; triton is imported only
when one of them runs or a check asks whether it is installed.
"""

from __future__ import annotations

import os

import torch

from aam import native
from aam.ops.attention.opdefs import (
    BWD_SCHEMA,
    FWD_SCHEMA,
    GPU_HEAD_DIMS,
    VARLEN_BWD_SCHEMA,
    VARLEN_FWD_SCHEMA,
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


def _triton_mod():
    return native.triton_kernels("attention")  # lazy: imports triton


@torch.library.custom_op("aam::attention_triton_fwd", mutates_args=(), schema=FWD_SCHEMA)
def _triton_fwd(q, k, v, key_lengths, key_padding_mask, scale):
    n, _, seq, _ = q.shape
    bound = kv_bounds(key_lengths, key_padding_mask, n, k.shape[2], q.device)
    mask = key_padding_mask if key_lengths is None else None
    return _triton_mod().attention_forward(q, k, v, bound, mask, scale)


@torch.library.custom_op("aam::attention_triton_bwd", mutates_args=(), schema=BWD_SCHEMA)
def _triton_bwd(dout, q, k, v, out, lse, key_lengths, key_padding_mask, scale):
    n = q.shape[0]
    bound = kv_bounds(key_lengths, key_padding_mask, n, k.shape[2], q.device)
    mask = key_padding_mask if key_lengths is None else None
    return _triton_mod().attention_backward(dout, q, k, v, out, lse, bound, mask, scale)


@_triton_fwd.register_fake
def _(q, k, v, key_lengths, key_padding_mask, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


_triton_bwd.register_fake(fake_bwd)
_triton_fwd.register_autograd(make_backward(_triton_bwd), setup_context=setup_ctx)


def attention(q, k, v, mask, lengths, scale, dropout_p):
    return _triton_fwd(q, k, v, lengths, None if lengths is not None else mask, scale)[0]


def check(req: KernelRequest) -> str | None:
    if req.dropout_p > 0.0:
        return "no dropout in the triton kernel (use sdpa or math for attention dropout)"
    dev = req.device
    if dev.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "triton runs on GPUs; on the CPU only under TRITON_INTERPRET=1 (tests)"
    if dev.type not in ("cpu", "cuda"):
        return f"no triton kernel for device type {dev.type}"
    ok, why = native.has_triton()
    if not ok:
        return why
    if req.dtype not in (torch.float32, *_HALF):
        return f"dtype {req.dtype} not supported (fp32/fp16/bf16)"
    if dev.type == "cpu" and req.dtype == torch.bfloat16:
        return "the Triton interpreter mishandles bfloat16 (runs on GPUs)"
    if req.head_dim not in GPU_HEAD_DIMS:
        return f"head_dim {req.head_dim} not in {GPU_HEAD_DIMS}"
    return None


@torch.library.custom_op("aam::attention_triton_varlen_fwd", mutates_args=(), schema=VARLEN_FWD_SCHEMA)
def _triton_varlen_fwd(q, k, v, cu_seqlens, max_seqlen, scale):
    return _triton_mod().attention_varlen_forward(q, k, v, cu_seqlens, max_seqlen, scale)


@torch.library.custom_op("aam::attention_triton_varlen_bwd", mutates_args=(), schema=VARLEN_BWD_SCHEMA)
def _triton_varlen_bwd(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    return _triton_mod().attention_varlen_backward(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale)


@_triton_varlen_fwd.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:2], dtype=torch.float32)


_triton_varlen_bwd.register_fake(fake_varlen_bwd)
_triton_varlen_fwd.register_autograd(make_varlen_backward(_triton_varlen_bwd), setup_context=varlen_setup)


def attention_varlen(q, k, v, cu_seqlens, max_seqlen, scale, dropout_p):
    return _triton_varlen_fwd(q, k, v, cu_seqlens, max_seqlen, scale)[0]
