"""The `sdpa` backend of masked attention: torch.nn.functional.scaled_dot_product_attention.

Any device and dtype, with dropout; no varlen form. On ROCm, SDPA's masked paths have returned wrong
results, so `auto` trusts it there only after its self-check against math (selfcheck.sdpa_trust_check).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aam.ops.attention.reference import lengths_to_padding_mask
from aam.ops.registry import KernelRequest


def attention(q, k, v, mask, lengths, scale, dropout_p):
    """torch SDPA with a bool attn_mask; rows without a valid key see key 0 unmasked, then output 0."""
    if mask is None and lengths is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    if mask is None:
        mask = lengths_to_padding_mask(lengths, k.shape[-2])
    empty = mask.all(dim=-1)  # [N]
    first = torch.zeros_like(mask)
    first[:, :1] = True
    attend = ~mask | (first & empty[:, None])  # never a row of all False: no NaN in SDPA's softmax
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend[:, None, None, :], dropout_p=dropout_p,
                                         scale=scale)
    return out.masked_fill(empty[:, None, None, None], 0.0)


def check(req: KernelRequest) -> str | None:
    return None
