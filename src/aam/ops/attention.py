"""Masked attention with key padding: softmax(q k^T * scale, keys masked) v, per head.

Contract on every backend: a query whose keys are all padding yields exactly 0 output and 0 gradient.
Backends register in aam.ops.registry under the op name "masked_attention".
"""

from __future__ import annotations

import math

import torch

from aam.ops import registry

OP = "masked_attention"


def attention_math(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
    scale: float, dropout_p: float,
) -> torch.Tensor:
    """Plain-torch reference in the input dtype. key_padding_mask [N, L] is True at padded keys."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if key_padding_mask is None:
        probs = torch.softmax(scores, dim=-1)
    else:
        pad = key_padding_mask[:, None, None, :]
        probs = torch.softmax(scores.masked_fill(pad, torch.finfo(scores.dtype).min), dim=-1)
        has_key = ~key_padding_mask.all(dim=-1)
        probs = probs * has_key[:, None, None, None].to(probs.dtype)
    if dropout_p > 0.0:
        probs = torch.nn.functional.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)


registry.register(OP, "math", attention_math, lambda req: None, priority=0)


def lengths_to_padding_mask(key_lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[N] lengths -> [N, max_len] bool mask, True at padded keys."""
    return torch.arange(max_len, device=key_lengths.device)[None, :] >= key_lengths[:, None]


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
    """q, k, v [N, H, L, Dh] -> [N, H, L, Dh]. Give either key_padding_mask [N, L] or key_lengths [N]."""
    if key_padding_mask is None and key_lengths is not None:
        key_padding_mask = lengths_to_padding_mask(key_lengths, k.shape[-2])
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    req = {"device": q.device, "dtype": q.dtype, "head_dim": q.shape[-1], "seq_len": k.shape[-2],
           "dropout_p": dropout_p}
    impl = registry.select(OP, registry.resolve_name(OP, backend), req)
    return impl.fn(q, k, v, key_padding_mask, scale, dropout_p)
