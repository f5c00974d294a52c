"""The `math` backend of the pairwise UniFrac loss: plain torch, float64-capable reference, any device."""

from __future__ import annotations

import torch

from aam.ops.registry import KernelRequest


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



def check(req: KernelRequest) -> str | None:
    return None
