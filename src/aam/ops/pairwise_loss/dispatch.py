"""Backend registration and the public op of the pairwise UniFrac loss.

`auto` tries triton (30), custom (20), math (0) and takes the first that can run (aam.ops.registry).

Debug checks: with the environment variable AAM_DEBUG_CHECKS=1, non-finite values in `emb`, in the
targets of weighted pairs or in `weights` raise aam.errors.InputError before any backend runs (this
costs a device sync, so it is off by default; without it NaN simply propagates into the loss).
"""

from __future__ import annotations

import os

import torch

from aam.errors import InputError
from aam.ops import registry
from aam.ops.pairwise_loss import custom, reference, selfcheck
from aam.ops.pairwise_loss import triton as triton_backend
from aam.ops.registry import KernelRequest

OP = "pairwise_unifrac_loss"
TRANSFORMS = ("identity", "tanh")
DEBUG_ENV = "AAM_DEBUG_CHECKS"

registry.register(OP, "math", reference.pairwise_loss_math, reference.check, priority=0)
registry.register(OP, "custom", custom.pairwise_loss_custom, custom.check, priority=20)
registry.register(OP, "triton", triton_backend.pairwise_loss_triton, triton_backend.check, priority=30,
                  auto_refusal=registry.auto_skips_triton_interpreter)
registry.register_diagnostic(OP, selfcheck.self_check_pairwise_unifrac_loss)


def debug_checks_enabled() -> bool:
    """True when AAM_DEBUG_CHECKS is set to anything but '' or '0'."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


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
    req = KernelRequest(emb.device, emb.dtype, batch=emb.shape[0], dim=emb.shape[1])
    impl = registry.select(OP, registry.resolve_name(OP, backend), req)
    return impl.fn(emb, target, transform, scale, weights)
