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


Layout = tuple[torch.Tensor, torch.Tensor, int]


def packed_layout(offsets: torch.Tensor) -> Layout:
    """(sample index [T], slot [T], S = largest sample) of the packed entries, computed on the host (the
    trainer's collate does it in the data loader, so the forward pass never reads a device value back)."""
    offsets = torch.as_tensor(offsets, dtype=torch.long).cpu()
    b, pos = packed_positions(offsets)
    return b, pos, int((offsets[1:] - offsets[:-1]).max()) if offsets.numel() > 1 else 0


def pad_packed(values: torch.Tensor, offsets: torch.Tensor,
               layout: Layout | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed values [T, ...] -> (padded [B, S, ...] with zeros, valid [B, S] bool); S = largest sample.

    `layout` (from packed_layout, moved to the values' device) skips recomputing the positions."""
    values = torch.as_tensor(values)
    n = len(offsets) - 1
    if layout is None:
        b, pos, s = packed_layout(offsets)
        b, pos = b.to(values.device), pos.to(values.device)
    else:
        b, pos, s = layout
    padded = values.new_zeros((n, s, *values.shape[1:]))
    padded[b, pos] = values
    valid = torch.zeros((n, s), dtype=torch.bool, device=values.device)
    valid[b, pos] = True
    return padded, valid


def unpad(padded: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Inverse of pad_packed: padded [B, S, ...] and valid [B, S] -> packed [T, ...] in batch order."""
    return padded[valid]
