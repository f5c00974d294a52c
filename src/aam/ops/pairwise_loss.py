"""Pairwise UniFrac loss: mean over i<j of (f(||e_i - e_j||) - t_ij)^2, f = identity or tanh(d / scale).

Backends register in aam.ops.registry under the op name "pairwise_unifrac_loss".
"""

from __future__ import annotations

import torch

from aam.ops import registry

OP = "pairwise_unifrac_loss"
TRANSFORMS = ("identity", "tanh")


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
    res = (pred - target.to(pred.dtype))[iu[0], iu[1]]
    if weights is None:
        return (res * res).mean() if res.numel() else emb.sum() * 0.0
    w = weights.to(pred.dtype)[iu[0], iu[1]]
    return (w * res * res).sum() / w.sum().clamp_min(torch.finfo(pred.dtype).tiny)


def _check_math(req: registry.Request) -> str | None:
    return None


registry.register(OP, "math", pairwise_loss_math, _check_math, priority=0)


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
    per-pair weights (0 marks a pair without a valid target). Returns a 0-d tensor.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    req = {"device": emb.device, "dtype": emb.dtype, "batch": emb.shape[0], "dim": emb.shape[1]}
    impl = registry.select(OP, registry.resolve_name(OP, backend), req)
    return impl.fn(emb, target, transform, scale, weights)
