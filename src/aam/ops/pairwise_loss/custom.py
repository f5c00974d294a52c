"""The `custom` backend of the pairwise UniFrac loss: the compiled kernels as one custom op pair.

C++/OpenMP on the CPU (float32/float64; float16/bfloat16 are upcast to float32), CUDA/HIP kernels on
GPUs (float32/float16/bfloat16, fp32 accumulation). `aam::pairwise_unifrac_loss_fwd` /
`aam::pairwise_unifrac_loss_bwd` serve every device; `_empty` allocates the GPU outputs (tests replace
it to poison them with NaN).
"""

from __future__ import annotations

import torch

from aam import native
from aam.ops.pairwise_loss.opdefs import define, run
from aam.ops.registry import KernelRequest

CPU_DTYPES = (torch.float32, torch.float64)
CPU_UPCAST = (torch.float16, torch.bfloat16)
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Output allocation of the GPU kernels (tests replace it to poison outputs with NaN)."""
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def _npairs_denom(b: int, weights_sum: float | None) -> float:
    return float(b * (b - 1) // 2) if weights_sum is None else weights_sum


def _cpu_fwd(emb, target, weights, use_tanh, scale):
    mod = native.cpu_module()
    b, d = emb.shape
    coef = torch.empty((b, b), dtype=emb.dtype)
    lsum, wsum = mod.pairwise_loss_forward(
        emb.data_ptr(), target.data_ptr(), 0 if weights is None else weights.data_ptr(), coef.data_ptr(),
        b, d, native.dtype_code(emb), use_tanh, scale,
    )
    denom = _npairs_denom(b, None if weights is None else wsum)
    loss = lsum / denom if denom > 0 else 0.0
    return (torch.tensor(loss, dtype=emb.dtype), coef,
            torch.tensor(denom, dtype=torch.float64))


def _cpu_bwd(grad, emb, coef, denom):
    b, d = emb.shape
    out = torch.zeros_like(emb) if b < 2 else torch.empty_like(emb)
    den = float(denom)
    factor = float(grad) / den if den > 0 else 0.0
    if b >= 2:
        native.cpu_module().pairwise_loss_backward(
            emb.data_ptr(), coef.data_ptr(), out.data_ptr(), b, d, native.dtype_code(emb), factor)
    return out


def _gpu_fwd(emb, target, weights, use_tanh, scale):
    mod = native.gpu_module()
    b, d = emb.shape
    if b < 2:
        coef = torch.zeros((b, b), dtype=torch.float32, device=emb.device)
        sums = torch.zeros(2, dtype=torch.float64, device=emb.device)
    else:
        coef = _empty((b, b), torch.float32, emb.device)
        sums = _empty((2,), torch.float64, emb.device)
        nparts = mod.pairwise_loss_num_partials(b)
        partials = _empty((nparts, 2), torch.float32, emb.device)
        mod.pairwise_loss_forward(
            emb.data_ptr(), target.data_ptr(), 0 if weights is None else weights.data_ptr(), coef.data_ptr(),
            partials.data_ptr(), sums.data_ptr(), b, d, native.dtype_code(emb), use_tanh, scale,
            native.stream_handle(emb.device),
        )
    lsum, wsum = sums[0], sums[1]
    loss = torch.where(wsum > 0, lsum / wsum.clamp_min(1e-300), torch.zeros_like(lsum))
    return loss.to(emb.dtype), coef, wsum.to(torch.float32)


def _gpu_bwd(grad, emb, coef, denom):
    b, d = emb.shape
    out = _empty(emb.shape, emb.dtype, emb.device) if b >= 2 else torch.zeros_like(emb)
    if b >= 2:
        factor = torch.where(denom > 0, grad.float() / denom.clamp_min(1e-30), torch.zeros_like(denom))
        factor = factor.reshape(1).contiguous()
        native.gpu_module().pairwise_loss_backward(
            emb.data_ptr(), coef.data_ptr(), factor.data_ptr(), out.data_ptr(), b, d, native.dtype_code(emb),
            native.stream_handle(emb.device),
        )
    return out


def _custom_fwd_impl(emb, target, weights, use_tanh, scale):
    if emb.device.type == "cpu":
        return _cpu_fwd(emb, target, weights, use_tanh, scale)
    return _gpu_fwd(emb, target, weights, use_tanh, scale)


def _custom_bwd_impl(grad, emb, target, weights, coef, denom, use_tanh, scale):
    if emb.device.type == "cpu":
        return _cpu_bwd(grad, emb, coef, denom)
    return _gpu_bwd(grad, emb, coef, denom)


def _custom_dtypes(emb: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(coef, denom) dtypes of the compiled op: the input dtype and fp64 on CPU, fp32 on GPU."""
    if emb.device.type == "cpu":
        return emb.dtype, torch.float64
    return torch.float32, torch.float32


custom_fwd_op, custom_bwd_op = define("pairwise_unifrac_loss", _custom_fwd_impl, _custom_bwd_impl, _custom_dtypes)


def pairwise_loss_custom(emb, target, transform, scale, weights):
    if emb.device.type == "cpu":
        kd = torch.float32 if emb.dtype in CPU_UPCAST else emb.dtype
        return run(custom_fwd_op, emb, target, transform, scale, weights, kd, kd)
    return run(custom_fwd_op, emb, target, transform, scale, weights, emb.dtype, torch.float32)


def check(req: KernelRequest) -> str | None:
    device, dtype = req.device, req.dtype
    _, reason = native.module_with(device, "pairwise_loss_forward")
    if reason:
        return reason
    if device.type == "cpu" and dtype not in CPU_DTYPES + CPU_UPCAST:
        return f"dtype {dtype} not supported on CPU (float32/float64; float16/bfloat16 are upcast)"
    if device.type == "cuda" and dtype not in GPU_DTYPES:
        return f"dtype {dtype} not supported on GPU (float32/float16/bfloat16)"
    return None
