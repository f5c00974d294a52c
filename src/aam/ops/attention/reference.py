"""The `math` backend of masked attention: plain torch, in the input dtype (float64 gives the reference).

Runs on every device and dtype, with dropout; the varlen form pads, runs the padded math and unpads.
"""

from __future__ import annotations

import torch

from aam.ops.registry import KernelRequest


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


def lengths_to_padding_mask(key_lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[N] lengths -> [N, max_len] bool mask, True at padded keys."""
    return torch.arange(max_len, device=key_lengths.device)[None, :] >= key_lengths[:, None]


def attention(q, k, v, mask, lengths, scale, dropout_p):
    """The padded op's backend signature: (q, k, v, key_padding_mask, key_lengths, scale, dropout_p)."""
    if mask is None and lengths is not None:
        mask = lengths_to_padding_mask(lengths, k.shape[-2])
    return attention_math(q, k, v, mask, scale, dropout_p)


def varlen_math(q, k, v, cu_seqlens, max_seqlen, scale, dropout_p):
    """Pads to [B, H, max_seqlen, Dh], runs math, unpads (differentiable)."""
    b = cu_seqlens.numel() - 1
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    seq = torch.repeat_interleave(torch.arange(b, device=q.device), lengths)
    pos = torch.arange(q.shape[0], device=q.device) - cu_seqlens.to(torch.int64)[seq]

    def pad(x):
        out = x.new_zeros((b, max_seqlen) + tuple(x.shape[1:]))
        out = out.index_put((seq, pos), x)
        return out.transpose(1, 2)

    mask = lengths_to_padding_mask(lengths, max_seqlen)
    out = attention_math(pad(q), pad(k), pad(v), mask, scale, dropout_p)
    return out.transpose(1, 2)[seq, pos]


def check(req: KernelRequest) -> str | None:
    return None
