"""Pre-LN transformer blocks whose attention goes through `aam.ops.masked_attention`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from aam.ops import masked_attention


class SelfAttention(nn.Module):
    """Multi-head self-attention with key padding; q/k/v from one Linear."""

    def __init__(self, dim: int, heads: int, attention_dropout: float, kernels: str) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_dropout = attention_dropout
        self.kernels = kernels

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        p = self.attention_dropout if self.training else 0.0
        out = masked_attention(qkv[0], qkv[1], qkv[2], key_padding_mask=pad, dropout_p=p, backend=self.kernels)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
    """x + Attn(LN(x)); x + FFN(LN(x)) with a GELU FFN of width ffn_ratio * D."""

    def __init__(self, dim: int, heads: int, ffn_ratio: int, dropout: float, attention_dropout: float,
                 kernels: str) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, attention_dropout, kernels)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, ffn_ratio * dim)
        self.fc_out = nn.Linear(ffn_ratio * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), pad))
        return x + self.drop(self.fc_out(self.drop(F.gelu(self.fc(self.ln2(x))))))


class Transformer(nn.Module):
    """A stack of Blocks and a final LayerNorm; `pad` [N, L] is True at padded positions."""

    def __init__(self, dim: int, heads: int, layers: int, ffn_ratio: int = 4, dropout: float = 0.1,
                 attention_dropout: float = 0.0, kernels: str = "auto", gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, heads, ffn_ratio, dropout, attention_dropout, kernels) for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(dim, eps=1e-6)
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, pad, use_reentrant=False)
            else:
                x = block(x, pad)
        return self.ln_f(x)


class AttentionPooling(nn.Module):
    """Masked attention pooling [N, L, D] -> [N, D]; a row with no valid position pools to zeros."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.scale = dim**-0.5

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        scores = self.score(x).squeeze(-1) * self.scale
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores.float(), dim=-1).to(x.dtype) * valid.to(x.dtype)
        pooled = self.norm(torch.einsum("nl,nld->nd", weights, x))
        return pooled * valid.any(dim=-1, keepdim=True).to(pooled.dtype)
