"""Backend registration and dispatch of masked attention, padded (`masked_attention`) and packed
(`masked_attention_varlen`), and the model's packing decision (`packed_backend`).

`auto` tries triton (30), custom (20), sdpa (10), math (0) and takes the first that can run (see
aam.ops.registry); each backend's module says what it runs on.
"""

from __future__ import annotations

import math

import torch

from aam.errors import BackendUnavailable
from aam.ops import registry
from aam.ops.attention import custom, reference, sdpa, selfcheck
from aam.ops.attention import triton as triton_backend
from aam.ops.attention.opdefs import GPU_HEAD_DIMS
from aam.ops.registry import KernelRequest

OP = "masked_attention"
OP_VARLEN = "masked_attention_varlen"

# CPU: custom vs SDPA fwd+bwd, measured with benchmarks/bench_attention.py and dense runs (2 cores, H=4,
# Dh=32): custom is 1.3-2x faster on padded batches at every shape and 1.5-1.7x on dense rows up to
# L=256; on dense rows of L=1024 the two tie (1.06x, 0.78x before the backward GEMM blocking), so
# `auto` leaves long unmasked rows to SDPA's blocked GEMMs.
CPU_CUSTOM_MAX_DENSE_LEN = 512


def _auto_skips_custom(req: KernelRequest) -> str | None:
    """`auto` leaves long unpadded rows on the CPU to SDPA (an explicit `custom` still runs them)."""
    if req.device.type == "cpu" and not req.padded and req.long_rows:
        return f"sdpa is as fast on the CPU for unpadded rows longer than {CPU_CUSTOM_MAX_DENSE_LEN}"
    return None


registry.register(OP, "math", reference.attention, reference.check, priority=0)
registry.register(OP, "sdpa", sdpa.attention, sdpa.check, priority=10, self_check=selfcheck.sdpa_trust_check)
registry.register(OP, "custom", custom.attention, custom.check, priority=20, auto_refusal=_auto_skips_custom)
registry.register(OP, "triton", triton_backend.attention, triton_backend.check, priority=30,
                  auto_refusal=registry.auto_skips_triton_interpreter)
registry.register(OP_VARLEN, "math", reference.varlen_math, reference.check, priority=0)
registry.register(OP_VARLEN, "custom", custom.attention_varlen, custom.check_varlen, priority=20)
registry.register(OP_VARLEN, "triton", triton_backend.attention_varlen, triton_backend.check, priority=30,
                  auto_refusal=registry.auto_skips_triton_interpreter)
registry.register_diagnostic(OP, selfcheck.self_check)
registry.register_diagnostic(OP_VARLEN, selfcheck.self_check_masked_attention_varlen)

_IMPLS = {(b.op, b.name): b.fn for op in (OP, OP_VARLEN) for b in registry.backends(op)}


def _head_dim_const(dim) -> int:
    """The head dim as a Python int; under torch.compile a symbolic size is specialised to one of the
    kernel sizes (or -1: any other size) through guards instead of reaching dispatch as a SymInt."""
    if not torch.compiler.is_compiling():
        return int(dim)
    for size in GPU_HEAD_DIMS:
        if dim == size:
            return size
    return -1


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
    req = KernelRequest(
        q.device, q.dtype, head_dim=_head_dim_const(q.shape[-1]),
        long_rows=True if k.shape[2] > CPU_CUSTOM_MAX_DENSE_LEN else False,  # a guarded Python bool, never a SymBool
        same_len=True if q.shape[2] == k.shape[2] else False,
        dropout_p=float(dropout_p), padded=key_padding_mask is not None or key_lengths is not None,
    )
    name = registry.select_name(OP, backend, req)
    return _IMPLS[(OP, name)](q, k, v, key_padding_mask, key_lengths, scale, dropout_p)


def _varlen_request(device: torch.device, dtype: torch.dtype, head_dim, dropout_p: float,
                    max_seqlen: int) -> KernelRequest:
    return KernelRequest(device, dtype, head_dim=_head_dim_const(head_dim),
                         long_rows=True if max_seqlen > CPU_CUSTOM_MAX_DENSE_LEN else False,  # never a SymBool
                         dropout_p=float(dropout_p))


def _varlen_choice(x: torch.Tensor, scale: float | None, dropout_p: float, max_seqlen: int,
                   backend: str) -> tuple[float, str]:
    """(scale, backend name) of a varlen call on tensors like `x` (head dim last)."""
    scale = 1.0 / math.sqrt(x.shape[-1]) if scale is None else float(scale)
    return scale, registry.select_name(OP_VARLEN, backend, _varlen_request(x.device, x.dtype, x.shape[-1], dropout_p,
                                                                            max_seqlen))


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
    scale, name = _varlen_choice(q, scale, dropout_p, max_seqlen, backend)
    return _IMPLS[(OP_VARLEN, name)](q, k, v, cu_seqlens, max_seqlen, scale, dropout_p)


def masked_attention_varlen_qkv(
    qkv: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """masked_attention_varlen of q, k, v packed in one [T, 3, H, Dh] tensor (one qkv Linear's output).

    The custom CPU kernel reads the three from it in place and writes their gradients into one [T, 3, H, Dh]
    buffer, so the backward concatenates nothing; every other backend runs on the unbound q, k, v.
    """
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"masked_attention_varlen_qkv: qkv must be [T, 3, H, Dh], got {tuple(qkv.shape)}")
    scale, name = _varlen_choice(qkv, scale, dropout_p, max_seqlen, backend)
    if name == "custom" and qkv.device.type == "cpu":
        return custom.attention_varlen_qkv(qkv, cu_seqlens, max_seqlen, scale)
    return _IMPLS[(OP_VARLEN, name)](*qkv.unbind(1), cu_seqlens, max_seqlen, scale, dropout_p)


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
        name = registry.select_name(OP_VARLEN, requested, _varlen_request(device, dtype, head_dim, dropout_p,
                                                                         max_seqlen))
    except BackendUnavailable:
        return None
    return None if name == "math" else name
