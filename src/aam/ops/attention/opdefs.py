"""Custom-op schemas, fake kernels and autograd glue shared by the compiled (`custom`) and Triton backends.

Each backend defines its forward and backward as `torch.library.custom_op`s with these schemas; the
forward returns (out, lse) and the backward recomputes from them. `kv_bounds` gives the GPU kernels one
past the last valid key of each row.
"""

from __future__ import annotations

import torch

GPU_HEAD_DIMS = (16, 32, 64, 128)  # head dims of the GPU kernels (CUDA/HIP and Triton)

FWD_SCHEMA = ("(Tensor q, Tensor k, Tensor v, Tensor? key_lengths, Tensor? key_padding_mask, float scale)"
              " -> (Tensor, Tensor)")
BWD_SCHEMA = ("(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? key_lengths,"
              " Tensor? key_padding_mask, float scale) -> (Tensor, Tensor, Tensor)")
VARLEN_FWD_SCHEMA = "(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, int max_seqlen, float scale) -> (Tensor, Tensor)"
VARLEN_BWD_SCHEMA = ("(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor cu_seqlens,"
                     " int max_seqlen, float scale) -> (Tensor, Tensor, Tensor)")


def kv_bounds(lengths: torch.Tensor | None, mask: torch.Tensor | None, n: int, lk: int,
              device: torch.device) -> torch.Tensor:
    """int32 [N]: one past the last valid key of each row (no host sync), for the GPU kernels."""
    if lengths is not None:
        return lengths.clamp(0, lk).to(torch.int32).contiguous()
    if mask is not None:
        pos = torch.arange(1, lk + 1, device=device, dtype=torch.int32)
        return (pos[None, :] * (~mask).to(torch.int32)).amax(dim=-1).to(torch.int32).contiguous()
    return torch.full((n,), lk, dtype=torch.int32, device=device)


def fake_bwd(dout, q, k, v, out, lse, key_lengths, key_padding_mask, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def setup_ctx(ctx, inputs, output):
    q, k, v, key_lengths, key_padding_mask, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_lengths, key_padding_mask)
    ctx.scale = scale


def make_backward(bwd_op):
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, key_lengths, key_padding_mask = ctx.saved_tensors
        dq, dk, dv = bwd_op(dout, q, k, v, out, lse, key_lengths, key_padding_mask, ctx.scale)
        return dq, dk, dv, None, None, None

    return backward


def fake_varlen_bwd(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def varlen_setup(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], cu_seqlens)
    ctx.max_seqlen, ctx.scale = max_seqlen, scale


def make_varlen_backward(bwd_op):
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, cu = ctx.saved_tensors
        dq, dk, dv = bwd_op(dout, q, k, v, out, lse, cu, ctx.max_seqlen, ctx.scale)
        return dq, dk, dv, None, None, None

    return backward

