"""Packed-batch helpers: entries of B samples concatenated, sample b owning offsets[b]:offsets[b+1]."""

from __future__ import annotations

import torch


def packed_positions(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample index [T], position within its sample [T]) of every packed entry."""
    offsets = torch.as_tensor(offsets, dtype=torch.long)
    lengths = offsets[1:] - offsets[:-1]
    b = torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths)
    pos = torch.arange(b.numel(), device=offsets.device) - offsets[:-1][b]
    return b, pos


def pad_packed(values: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed values [T, ...] -> (padded [B, S, ...] with zeros, valid [B, S] bool); S = largest sample."""
    values = torch.as_tensor(values)
    offsets = torch.as_tensor(offsets, dtype=torch.long, device=values.device)
    n = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]
    s = int(lengths.max()) if n > 0 else 0
    b, pos = packed_positions(offsets)
    padded = values.new_zeros((n, s, *values.shape[1:]))
    padded[b, pos] = values
    valid = torch.zeros((n, s), dtype=torch.bool, device=values.device)
    valid[b, pos] = True
    return padded, valid


def unpad(padded: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Inverse of pad_packed: padded [B, S, ...] and valid [B, S] -> packed [T, ...] in batch order."""
    return padded[valid]
