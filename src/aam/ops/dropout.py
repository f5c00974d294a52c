"""Dropout: `dropout(x, p, training, backend="auto")`.

Backends:
- custom (CPU, float32/float64; aam._C): a counter-based mask. Element i is kept when a hash of (seed, i)
  clears p; the seed comes from torch's CPU generator (so torch.manual_seed and activation checkpointing,
  which restores the generator, reproduce it) and the backward recomputes the mask from it: no mask is
  stored, and the kernel runs near memory speed (about 13x torch's CPU dropout on 16M floats).
- math: torch.nn.functional.dropout (every device and dtype; GPUs use torch's fused Philox kernel).
Both keep an element with probability 1 - p and scale it by 1 / (1 - p).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aam import native
from aam.ops import registry
from aam.ops.registry import KernelRequest

OP = "dropout"
CPU_DTYPES = (torch.float32, torch.float64)


@torch.library.custom_op("aam::dropout_cpu", mutates_args=())
def _dropout_cpu(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    out = torch.empty_like(x)
    native.cpu_module().dropout(x.data_ptr(), out.data_ptr(), x.numel(), native.dtype_code(x), seed, p)
    return out


@_dropout_cpu.register_fake
def _(x, p, seed):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output) -> None:
    _, ctx.p, ctx.seed = inputs


def _backward(ctx, grad):
    return _dropout_cpu(grad.contiguous(), ctx.p, ctx.seed), None, None


_dropout_cpu.register_autograd(_backward, setup_context=_setup_context)


def draw_seed() -> int:
    """The custom kernel's mask seed, from torch's CPU generator (one draw per dropout call)."""
    return int(torch.randint(0, 2**62, (1,)).item())


def _custom(x: torch.Tensor, p: float) -> torch.Tensor:
    return _dropout_cpu(x.contiguous(), p, draw_seed())


def _math(x: torch.Tensor, p: float) -> torch.Tensor:
    return F.dropout(x, p, True)


def _check_custom(req: KernelRequest) -> str | None:
    if req.device.type != "cpu":
        return "the custom dropout is a CPU kernel (GPUs use torch's fused dropout)"
    _, reason = native.module_with(req.device, "dropout")
    if reason:
        return reason
    if req.dtype not in CPU_DTYPES:
        return f"dtype {req.dtype} not supported (float32/float64)"
    return None


registry.register(OP, "math", _math, lambda req: None, priority=0)
registry.register(OP, "custom", _custom, _check_custom, priority=20)


def dropout(x: torch.Tensor, p: float, training: bool = True, backend: str = "auto") -> torch.Tensor:
    """Zero each element with probability p and scale the rest by 1 / (1 - p); identity when not training
    or p == 0."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if torch.compiler.is_compiling():  # the seed's .item() would break the graph: torch's op traces
        return F.dropout(x, p, True)
    return registry.select(OP, backend, KernelRequest(x.device, x.dtype)).fn(x, p)


def self_check_dropout(backend: str, device: torch.device | str) -> dict:
    """`aam kernels` check: on 2^20 float32 ones at p = 0.3, the dropped fraction is within 6 standard
    deviations of p, kept values equal 1 / (1 - p), and the gradient is the same mask times the scale."""
    device = torch.device(device)
    n, p = 1 << 20, 0.3
    x = torch.ones(n, device=device, requires_grad=True)
    out = dropout(x, p, True, backend)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    kept = out != 0
    frac = 1.0 - kept.float().mean().item()
    tol = 6 * (p * (1 - p) / n) ** 0.5
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32, device=device)
    ok = abs(frac - p) <= tol and bool((out[kept] == scale).all()) and bool(torch.equal(grad, out.detach()))
    return {"ok": ok, "dropped": frac,
            "detail": f"dropped {frac:.4f} of 2^20 at p {p} (tol {tol:.4f}); kept = 1/(1-p); grad = mask/(1-p)"}


registry.register_diagnostic(OP, self_check_dropout)
