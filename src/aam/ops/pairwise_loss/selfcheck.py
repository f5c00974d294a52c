"""`aam kernels` self-check of the pairwise UniFrac loss, with the parity rule of aam.ops.parity."""

from __future__ import annotations

import torch

from aam.ops import parity
from aam.ops.pairwise_loss.reference import pairwise_loss_math


def self_check_pairwise_unifrac_loss(backend: str, device: torch.device | str) -> dict:
    """A random batch with a duplicate pair and zero-weight pairs, both transforms, in float32: loss and
    gradient against float64 math, with float32 math setting the tolerance (DESIGN.md's parity rule).
    Returns {"ok", "max_err_fwd", "max_err_bwd", "tol_fwd", "tol_bwd", "nan", "detail"}."""
    from aam.ops.pairwise_loss.dispatch import pairwise_unifrac_loss

    device = torch.device(device)
    g = torch.Generator().manual_seed(7)
    b, d = 37, 24
    emb = torch.randn(b, d, generator=g, dtype=torch.float64)
    emb[5] = emb[3]  # a duplicate pair: distance 0, gradient defined as 0
    target = torch.rand(b, b, generator=g, dtype=torch.float64)
    target = (target + target.T) / 2
    weights = (torch.rand(b, b, generator=g, dtype=torch.float64) > 0.1).to(torch.float64)

    def result(fn, dtype, transform, w):
        x = emb.to(device, dtype).requires_grad_(True)
        wt = None if w is None else w.to(device, dtype)
        out = fn(x, target.to(device, dtype), transform, 4.0, wt)
        (grad,) = torch.autograd.grad(out, x)
        return out.detach(), [grad.detach()]

    def kernel(*args):
        return pairwise_unifrac_loss(*args, backend=backend)

    checks = []
    for transform, w in (("identity", None), ("tanh", weights)):
        ref = result(pairwise_loss_math, torch.float64, transform, w)
        low = result(pairwise_loss_math, torch.float32, transform, w)
        got = result(kernel, torch.float32, transform, w)
        checks += parity.check_fwd_bwd(ref, low, got, torch.float32, names=["grad"], what=transform).checks
    report = parity.Report(tuple(checks))
    fwd, bwd = report.worst("forward"), report.worst("backward")
    detail = (f"float32: max err fwd {fwd.err:.2e} (tol {fwd.bound:.1e}), bwd {bwd.err:.2e} (tol {bwd.bound:.1e})"
              + (", NaN" if report.nan else ""))
    return {"ok": report.ok, "max_err_fwd": max(c.err for c in checks if c.kind == "forward"),
            "max_err_bwd": max(c.err for c in checks if c.kind == "backward"), "tol_fwd": fwd.bound,
            "tol_bwd": bwd.bound, "nan": report.nan, "detail": detail}
