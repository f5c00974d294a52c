"""Pre-LN transformer blocks whose attention goes through `aam.ops.masked_attention`.

Where a varlen attention kernel can run (see `aam.ops.attention.packed_backend`), a Transformer packs
the valid tokens of its padded input into one [T, D] sequence with cumulative offsets, runs every block
on them (Linear, FFN and attention cost nothing for padding) and scatters the result back; padded
positions come out as zeros. Under torch.compile, or without a varlen kernel, it runs the padded op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from aam.ops.attention import masked_attention, masked_attention_varlen_qkv, packed_backend
from aam.ops.dropout import dropout
from aam.ops.mlp import gelu_mlp


@dataclass(frozen=True)
class Packing:
    """Valid tokens of a padded [N, L] batch: flat positions `index` [T] in row order (None: no padding, every
    token in place); row b owns packed tokens cu_seqlens[b]:cu_seqlens[b + 1]; `backend` is the varlen backend
    to run."""

    index: torch.Tensor | None
    cu_seqlens: torch.Tensor
    max_seqlen: int
    backend: str

    @classmethod
    def from_padding(cls, pad: torch.Tensor | None, x: torch.Tensor, backend: str) -> Packing:
        """The packing of a [N, L, D] batch `x` with key padding `pad` [N, L] (None: no padding)."""
        n, length = x.shape[:2]
        if pad is None:  # e.g. 16S reads of one length: the rows are the sequences
            cu_seqlens = torch.arange(0, (n + 1) * length, length, dtype=torch.int32, device=x.device)
            return cls(None, cu_seqlens, length, backend)
        valid = ~pad
        counts = valid.sum(dim=1)
        cu_seqlens = F.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
        index = valid.reshape(-1).nonzero().squeeze(1)
        return cls(index, cu_seqlens, int(counts.max()), backend)


class SelfAttention(nn.Module):
    """Multi-head self-attention with key padding; q/k/v from one Linear."""

    def __init__(self, dim: int, heads: int, attention_dropout: float, kernels: str) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_dropout = attention_dropout
        self.kernels = kernels
        self.recorded: list[torch.Tensor] | None = None  # see record_attention

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None, packing: Packing | None = None) -> torch.Tensor:
        p = self.attention_dropout if self.training else 0.0
        if packing is not None:  # x [T, D]
            tokens, dim = x.shape
            qkv = self.qkv(x).view(tokens, 3, self.heads, dim // self.heads)  # q, k, v read in place
            out = masked_attention_varlen_qkv(qkv, packing.cu_seqlens, packing.max_seqlen, dropout_p=p,
                                              backend=packing.backend)
            return self.proj(out.reshape(tokens, dim))
        n, length, dim = x.shape
        # unbind, not qkv[0..2]: the backward of each index would zero-fill a full-size gradient
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.recorded is not None:
            weights = attention_weights(q, k, pad)
            self.recorded.append(weights.detach())
            out = weights.to(v.dtype) @ v
        else:
            out = masked_attention(q, k, v, key_padding_mask=pad, dropout_p=p, backend=self.kernels)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


def attention_weights(q: torch.Tensor, k: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh)) over the valid keys: [N, H, L, L] in float32 (float64 for float64 inputs);
    weight 0 on padded keys, and a query whose keys are all padding gets all zeros."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = (q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * q.shape[-1] ** -0.5
    if pad is not None:
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Within the block, every SelfAttention of `model` runs padded (no packing) on the math path and appends
    its attention weights [N, H, L, L] (attention_weights) to the list under its module name, once per call."""
    attns = {name: m for name, m in model.named_modules() if isinstance(m, SelfAttention)}
    stacks = [m for m in model.modules() if isinstance(m, Transformer)]
    packed = [t.packed for t in stacks]
    records: dict[str, list[torch.Tensor]] = {name: [] for name in attns}
    for name, m in attns.items():
        m.recorded = records[name]
    for t in stacks:
        t.packed = False
    try:
        yield records
    finally:
        for m in attns.values():
            m.recorded = None
        for t, was in zip(stacks, packed, strict=True):
            t.packed = was


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
        self.dropout_p = dropout
        self.dropout_backend = "math" if kernels == "math" else "auto"  # the CPU kernel unless --kernels math
        self.mlp_backend = "math" if kernels == "math" else "auto"  # the row-blocked CPU MLP unless math

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.dropout_p, self.training, self.dropout_backend)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None, packing: Packing | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), pad, packing))
        p = self.dropout_p if self.training else 0.0
        return x + self.drop(gelu_mlp(self.ln2(x), self.fc, self.fc_out, self.mlp_backend, p))


class Transformer(nn.Module):
    """A stack of Blocks and a final LayerNorm; `pad` [N, L] is True at padded positions.

    With `packed` (default) and a varlen kernel available, runs on the valid tokens only; the output at
    padded positions is then 0 (callers mask or pool over valid positions either way).
    """

    def __init__(self, dim: int, heads: int, layers: int, ffn_ratio: int = 4, dropout: float = 0.1,
                 attention_dropout: float = 0.0, kernels: str = "auto", gradient_checkpointing: bool = False,
                 packed: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, heads, ffn_ratio, dropout, attention_dropout, kernels) for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(dim, eps=1e-6)
        self.gradient_checkpointing = gradient_checkpointing
        self.packed = packed

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        packing = self._packing(x, pad)
        if packing is None:
            return self._run(x, pad, None)
        n, length, dim = x.shape
        if packing.index is None:
            return self._run(x.reshape(n * length, dim), None, packing).view(n, length, dim)
        tokens = self._run(x.reshape(n * length, dim).index_select(0, packing.index), None, packing)
        return tokens.new_zeros(n * length, dim).index_copy(0, packing.index, tokens).view(n, length, dim)

    def _run(self, x: torch.Tensor, pad: torch.Tensor | None, packing: Packing | None) -> torch.Tensor:
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, pad, packing, use_reentrant=False)
            else:
                x = block(x, pad, packing)
        return self.ln_f(x)

    def _packing(self, x: torch.Tensor, pad: torch.Tensor | None) -> Packing | None:
        """How to pack this batch, or None to run padded (no varlen kernel, nothing valid, no padding on a GPU, or
        compiling)."""
        if not self.packed or not self.blocks or x.shape[0] * x.shape[1] == 0 or torch.compiler.is_compiling():
            return None
        attn = self.blocks[0].attn
        attn_dropout = attn.attention_dropout if self.training else 0.0
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        backend = packed_backend(attn.kernels, x.device, dtype, x.shape[2] // attn.heads, attn_dropout, x.shape[1])
        if backend is None:
            return None
        unpadded = pad is None or not bool(pad.any())
        if unpadded and x.device.type != "cpu":
            return None  # no padding on a GPU: the padded op (SDPA's fused kernels) needs no packing
        packing = Packing.from_padding(None if unpadded else pad, x, backend)
        # Nothing valid: run padded. No padding on the CPU: packed in place, which spares the padded op's
        # q/k/v and output layout copies.
        return None if packing.index is not None and packing.index.numel() == 0 else packing


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
