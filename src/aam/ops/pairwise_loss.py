"""Pairwise UniFrac loss: mean over i<j of (f(||e_i - e_j||) - t_ij)^2, f = identity or tanh(d / scale).

With per-pair `weights` [B, B] the mean is weighted: sum w r^2 / sum w over i<j; weight 0 marks a pair
without a valid target (it contributes nothing, even when its target is NaN). The gradient at
duplicate embeddings (distance 0) is defined as 0. No backend materialises a [B, B, D] tensor.

Backends (aam.ops.registry, op "pairwise_unifrac_loss"):
- `triton` (priority 30): aam.kernels.pairwise_loss on CUDA/ROCm; on CPU only under TRITON_INTERPRET=1
  (never chosen by `auto` there). On GPUs `auto` prefers it: its Gram tiles run on tl.dot (tensor cores
  for fp16/bf16), while the CUDA kernel below forms differences with scalar fp32 FMAs. Not yet measured
  on a GPU: benchmarks/device_check.sh times both.
- `custom` (priority 20): C++/OpenMP on CPU (float32/float64; float16/bfloat16 are upcast to float32),
  CUDA/HIP kernels on GPU (float32/float16/bfloat16, fp32 accumulation). One torch.library custom op
  pair `aam::pairwise_unifrac_loss_fwd` / `aam::pairwise_unifrac_loss_bwd` serves every device.
- `math` (priority 0): plain torch, float64-capable reference.

Every compiled forward returns (loss, coef, denom): coef [B, B] holds the per-pair backward
coefficients c_ij = 2 w_ij r_ij f'(d_ij) / d_ij (symmetric, 0 on the diagonal), denom the number of
pairs (or the weight sum). Backward is grad_e_i = grad * sum_j c_ij (e_i - e_j) / denom.

Debug checks: with the environment variable AAM_DEBUG_CHECKS=1, non-finite values in `emb`, in the
targets of weighted pairs or in `weights` raise aam.errors.InputError before any backend runs (this
costs a device sync, so it is off by default; without it NaN simply propagates into the loss).
"""

from __future__ import annotations

import os

import torch

from aam import native
from aam.errors import InputError
from aam.ops import registry

OP = "pairwise_unifrac_loss"
TRANSFORMS = ("identity", "tanh")
DEBUG_ENV = "AAM_DEBUG_CHECKS"

_FWD_SCHEMA = "(Tensor emb, Tensor target, Tensor? weights, bool use_tanh, float scale) -> (Tensor, Tensor, Tensor)"
_BWD_SCHEMA = (
    "(Tensor grad, Tensor emb, Tensor target, Tensor? weights, Tensor coef, Tensor denom, bool use_tanh, "
    "float scale) -> Tensor"
)


def debug_checks_enabled() -> bool:
    """True when AAM_DEBUG_CHECKS is set to anything but '' or '0'."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


# ---- math ---------------------------------------------------------------------------------------

def pairwise_loss_math(
    emb: torch.Tensor, target: torch.Tensor, transform: str, scale: float, weights: torch.Tensor | None
) -> torch.Tensor:
    """Plain-torch reference in the input dtype (float64 inputs give the float64 reference).

    Distances come from the Gram matrix, so memory is O(B^2), never O(B^2 D). The distance of a pair
    of identical embeddings has gradient 0 (the clamp keeps sqrt away from 0).
    """
    b = emb.shape[0]
    sq = (emb * emb).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (emb @ emb.T)).clamp_min(0.0)
    tiny = torch.finfo(emb.dtype).tiny
    d = torch.sqrt(d2.clamp_min(tiny)) * (d2 > 0)
    pred = torch.tanh(d / scale) if transform == "tanh" else d
    iu = torch.triu_indices(b, b, offset=1, device=emb.device)
    tgt = target.to(pred.dtype)
    if weights is not None:  # pairs of weight 0 have no target (it may be NaN): neutralise it
        tgt = torch.where(weights != 0, tgt, torch.zeros_like(tgt))
    res = (pred - tgt)[iu[0], iu[1]]
    if weights is None:
        return (res * res).mean() if res.numel() else emb.sum() * 0.0
    w = weights.to(pred.dtype)[iu[0], iu[1]]
    return (w * res * res).sum() / w.sum().clamp_min(torch.finfo(pred.dtype).tiny)


registry.register(OP, "math", pairwise_loss_math, lambda req: None, priority=0)


# ---- compiled kernels (C++ on CPU, CUDA/HIP on GPU) as one custom op ----------------------------

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
    coef = (torch.empty if b >= 2 else torch.zeros)((b, b), dtype=torch.float32, device=emb.device)
    sums = torch.zeros(2, dtype=torch.float64, device=emb.device)
    if b >= 2:
        nparts = mod.pairwise_loss_num_partials(b)
        partials = torch.empty((nparts, 2), dtype=torch.float32, device=emb.device)
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
    out = torch.zeros_like(emb)
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


def _triton_fwd_impl(emb, target, weights, use_tanh, scale):
    from aam.kernels import pairwise_loss as tk

    return tk.forward(emb, target, weights, use_tanh, scale)


def _triton_bwd_impl(grad, emb, target, weights, coef, denom, use_tanh, scale):
    from aam.kernels import pairwise_loss as tk

    return tk.backward(grad, emb, coef, denom)


def _custom_dtypes(emb: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(coef, denom) dtypes of the compiled op: the input dtype and fp64 on CPU, fp32 on GPU."""
    if emb.device.type == "cpu":
        return emb.dtype, torch.float64
    return torch.float32, torch.float32


def _triton_dtypes(emb: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    return torch.float32, torch.float32


def _define(name: str, fwd_impl, bwd_impl, aux_dtypes):
    """Define aam::<name>_fwd / aam::<name>_bwd with fake kernels and autograd; returns both ops."""
    fwd = torch.library.custom_op(f"aam::{name}_fwd", fwd_impl, mutates_args=(), schema=_FWD_SCHEMA)
    bwd = torch.library.custom_op(f"aam::{name}_bwd", bwd_impl, mutates_args=(), schema=_BWD_SCHEMA)

    @fwd.register_fake
    def _(emb, target, weights, use_tanh, scale):
        b = emb.shape[0]
        coef_dtype, denom_dtype = aux_dtypes(emb)
        return (emb.new_empty(()), emb.new_empty((b, b), dtype=coef_dtype),
                emb.new_empty((), dtype=denom_dtype))

    @bwd.register_fake
    def _(grad, emb, target, weights, coef, denom, use_tanh, scale):
        return torch.empty_like(emb)

    def setup_context(ctx, inputs, output):
        emb, target, weights, use_tanh, scale = inputs
        _, coef, denom = output
        ctx.save_for_backward(emb, target, weights, coef, denom)
        ctx.use_tanh, ctx.scale = use_tanh, scale

    def backward(ctx, grad_loss, grad_coef, grad_denom):
        emb, target, weights, coef, denom = ctx.saved_tensors
        grad_emb = bwd(grad_loss, emb, target, weights, coef, denom, ctx.use_tanh, ctx.scale)
        return grad_emb, None, None, None, None

    fwd.register_autograd(backward, setup_context=setup_context)
    return fwd, bwd


custom_fwd_op, custom_bwd_op = _define("pairwise_unifrac_loss", _custom_fwd_impl, _custom_bwd_impl,
                                       _custom_dtypes)
triton_fwd_op, triton_bwd_op = _define("pairwise_unifrac_loss_triton", _triton_fwd_impl, _triton_bwd_impl,
                                       _triton_dtypes)

CPU_DTYPES = (torch.float32, torch.float64)
CPU_UPCAST = (torch.float16, torch.bfloat16)
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _run(op, emb: torch.Tensor, target: torch.Tensor, transform: str, scale: float,
         weights: torch.Tensor | None, kernel_dtype: torch.dtype, target_dtype: torch.dtype) -> torch.Tensor:
    e = emb.to(kernel_dtype).contiguous()
    t = target.to(target_dtype).contiguous()
    w = None if weights is None else weights.to(target_dtype).contiguous()
    loss, _, _ = op(e, t, w, transform == "tanh", float(scale))
    return loss.to(emb.dtype)


def pairwise_loss_custom(emb, target, transform, scale, weights):
    if emb.device.type == "cpu":
        kd = torch.float32 if emb.dtype in CPU_UPCAST else emb.dtype
        return _run(custom_fwd_op, emb, target, transform, scale, weights, kd, kd)
    return _run(custom_fwd_op, emb, target, transform, scale, weights, emb.dtype, torch.float32)


def pairwise_loss_triton(emb, target, transform, scale, weights):
    return _run(triton_fwd_op, emb, target, transform, scale, weights, emb.dtype, torch.float32)


def _check_custom(req: registry.Request) -> str | None:
    device, dtype = req["device"], req["dtype"]
    _, reason = native.module_with(device, "pairwise_loss_forward")
    if reason:
        return reason
    if device.type == "cpu" and dtype not in CPU_DTYPES + CPU_UPCAST:
        return f"dtype {dtype} not supported on CPU (float32/float64; float16/bfloat16 are upcast)"
    if device.type == "cuda" and dtype not in GPU_DTYPES:
        return f"dtype {dtype} not supported on GPU (float32/float16/bfloat16)"
    return None


def _check_triton(req: registry.Request) -> str | None:
    device, dtype = req["device"], req["dtype"]
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "Triton runs on CUDA/ROCm devices (on CPU only under TRITON_INTERPRET=1, for tests)"
    elif device.type != "cuda":
        return f"Triton does not run on device type {device.type!r}"
    if dtype not in GPU_DTYPES:
        return f"dtype {dtype} not supported by the Triton kernels (float32/float16/bfloat16)"
    ok, why = native.has_triton()
    return None if ok else why


registry.register(OP, "custom", pairwise_loss_custom, _check_custom, priority=20)
registry.register(OP, "triton", pairwise_loss_triton, _check_triton, priority=30,
                  auto_refusal=registry.auto_skips_triton_interpreter)


# ---- public op -----------------------------------------------------------------------------------

def _validate(emb: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, scale: float) -> None:
    if emb.dim() != 2:
        raise InputError(f"pairwise_unifrac_loss: emb must be [B, D], got shape {tuple(emb.shape)}")
    b = emb.shape[0]
    if tuple(target.shape) != (b, b):
        raise InputError(f"pairwise_unifrac_loss: target must be [{b}, {b}] for emb {tuple(emb.shape)}, "
                         f"got {tuple(target.shape)}")
    if weights is not None and tuple(weights.shape) != (b, b):
        raise InputError(f"pairwise_unifrac_loss: weights must be [{b}, {b}], got {tuple(weights.shape)}")
    for name, t in (("target", target), ("weights", weights)):
        if t is not None and t.device != emb.device:
            raise InputError(f"pairwise_unifrac_loss: {name} is on {t.device} but emb is on {emb.device}; "
                             "move both to one device")
    if not scale > 0:
        raise InputError(f"pairwise_unifrac_loss: scale must be > 0, got {scale}")


def _debug_check(emb: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> None:
    if not bool(torch.isfinite(emb).all()):
        bad = torch.nonzero(~torch.isfinite(emb))[0].tolist()
        raise InputError(f"pairwise_unifrac_loss: emb has a non-finite value at row {bad[0]}, column {bad[1]} "
                         "(check the encoder for overflow; try float32 or a lower learning rate)")
    b = emb.shape[0]
    upper = torch.ones(b, b, dtype=torch.bool, device=emb.device).triu(1)
    if weights is not None:
        if not bool(torch.isfinite(weights[upper]).all()):
            raise InputError("pairwise_unifrac_loss: weights have a non-finite value; use 0 for missing pairs")
        upper = upper & (weights != 0)
    bad = upper & ~torch.isfinite(target)
    if bool(bad.any()):
        i, j = torch.nonzero(bad)[0].tolist()
        raise InputError(f"pairwise_unifrac_loss: target has a non-finite value for pair ({i}, {j}); "
                         "fix the distance matrix or give that pair weight 0")


def pairwise_unifrac_loss(
    emb: torch.Tensor,
    target: torch.Tensor,
    transform: str = "identity",
    scale: float = 10.0,
    weights: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Mean squared error between transformed embedding distances and UniFrac targets over pairs i<j.

    emb [B, D]; target [B, B] (only the strict upper triangle is read); weights [B, B] optional
    per-pair weights (0 marks a pair without a valid target). Returns a 0-d tensor in emb's dtype
    (0 with zero gradient when there is no pair, e.g. B = 1).
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    _validate(emb, target, weights, scale)
    if debug_checks_enabled():
        _debug_check(emb, target, weights)
    req = {"device": emb.device, "dtype": emb.dtype, "batch": emb.shape[0], "dim": emb.shape[1]}
    impl = registry.select(OP, registry.resolve_name(OP, backend), req)
    return impl.fn(emb, target, transform, scale, weights)


def self_check_pairwise_unifrac_loss(backend: str, device: torch.device | str) -> dict:
    """`aam kernels` check: a random batch with a duplicate pair and zero-weight pairs vs float64 math.

    Checks loss and gradient of both transforms in float32; fails on NaN or on an error above the fp32
    floors of DESIGN.md's parity rule scaled by the problem (1e-5 forward, 1e-4 backward, relative).
    """
    device = torch.device(device)
    g = torch.Generator().manual_seed(7)
    b, d = 37, 24
    emb = torch.randn(b, d, generator=g, dtype=torch.float64)
    emb[5] = emb[3]  # a duplicate pair: distance 0, gradient defined as 0
    target = torch.rand(b, b, generator=g, dtype=torch.float64)
    target = (target + target.T) / 2
    weights = (torch.rand(b, b, generator=g, dtype=torch.float64) > 0.1).to(torch.float64)
    worst_f = worst_b = 0.0
    nan = False
    for transform, w in (("identity", None), ("tanh", weights)):
        ref_in = emb.clone().requires_grad_(True)
        ref = pairwise_loss_math(ref_in, target, transform, 4.0, w)
        (ref_g,) = torch.autograd.grad(ref, ref_in)
        x = emb.to(device, torch.float32).requires_grad_(True)
        wt = None if w is None else w.to(device, torch.float32)
        out = pairwise_unifrac_loss(x, target.to(device, torch.float32), transform, 4.0, wt, backend=backend)
        (grad,) = torch.autograd.grad(out, x)
        nan = nan or bool(torch.isnan(out).any()) or bool(torch.isnan(grad).any())
        worst_f = max(worst_f, abs(out.double().item() - ref.item()) / max(1.0, abs(ref.item())))
        scale_g = max(1.0, ref_g.abs().max().item())
        worst_b = max(worst_b, (grad.double().cpu() - ref_g).abs().max().item() / scale_g)
    ok = not nan and worst_f <= 1e-5 and worst_b <= 1e-4
    return {"ok": ok, "max_err_fwd": worst_f, "max_err_bwd": worst_b, "nan": nan,
            "detail": f"float32: rel err fwd {worst_f:.2e} (tol 1e-05), bwd {worst_b:.2e} (tol 1e-04)"
            + (", NaN" if nan else "")}
