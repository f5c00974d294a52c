"""The `triton` backend of the pairwise UniFrac loss: aam.kernels.pairwise_loss.

CUDA/ROCm (float32/float16/bfloat16); on the CPU only under TRITON_INTERPRET=1 (tests; `auto` never
takes it there). On GPUs `auto` prefers it: its Gram tiles run on tl.dot (tensor cores for fp16/bf16),
while the CUDA kernel forms differences with scalar fp32 FMAs. Custom ops
`aam::pairwise_unifrac_loss_triton_fwd/bwd`; triton is imported only when they run.
"""

from __future__ import annotations

import os

import torch

from aam import native
from aam.ops.pairwise_loss.custom import GPU_DTYPES
from aam.ops.pairwise_loss.opdefs import define, run
from aam.ops.registry import KernelRequest


def _fwd_impl(emb, target, weights, use_tanh, scale):
    return native.triton_kernels("pairwise_loss").forward(emb, target, weights, use_tanh, scale)


def _bwd_impl(grad, emb, target, weights, coef, denom, use_tanh, scale):
    return native.triton_kernels("pairwise_loss").backward(grad, emb, coef, denom)


def _triton_dtypes(emb: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    return torch.float32, torch.float32


triton_fwd_op, triton_bwd_op = define("pairwise_unifrac_loss_triton", _fwd_impl, _bwd_impl, _triton_dtypes)


def pairwise_loss_triton(emb, target, transform, scale, weights):
    return run(triton_fwd_op, emb, target, transform, scale, weights, emb.dtype, torch.float32)


def check(req: KernelRequest) -> str | None:
    device, dtype = req.device, req.dtype
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "Triton runs on CUDA/ROCm devices (on CPU only under TRITON_INTERPRET=1, for tests)"
    elif device.type != "cuda":
        return f"Triton does not run on device type {device.type!r}"
    if dtype not in GPU_DTYPES:
        return f"dtype {dtype} not supported by the Triton kernels (float32/float16/bfloat16)"
    ok, why = native.has_triton()
    return None if ok else why
