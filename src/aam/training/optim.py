"""AdamW without weight decay on norms, biases and embeddings; linear warmup + cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed (Linear weights) and not decayed (biases, LayerNorm, Embedding, EmbeddingBag)."""
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.Embedding, nn.EmbeddingBag)):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if id(p) in no_decay_ids or name.endswith("bias") or p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999))


def default_warmup(total_steps: int) -> int:
    """5% of the optimizer steps of the run (at least 1)."""
    return max(1, round(0.05 * total_steps))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int | None = None,
                   min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to lr, then half-cosine to min_lr_ratio * lr at `total_steps`. Step once per
    optimizer step."""
    total_steps = max(1, total_steps)
    warmup = default_warmup(total_steps) if warmup_steps is None else max(0, warmup_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def scale_base_lr(optimizer: torch.optim.Optimizer, model: nn.Module, scale: float) -> None:
    """Split each param group into base_model / other parameters; the base ones get lr * scale."""
    base = {id(p) for name, p in model.named_parameters() if "base_model." in name}
    groups = []
    for group in optimizer.param_groups:
        params = group.pop("params")
        for in_base in (False, True):
            sub = [p for p in params if (id(p) in base) == in_base]
            if sub:
                groups.append({**group, "params": sub, "lr": group["lr"] * (scale if in_base else 1.0)})
    optimizer.param_groups.clear()
    for g in groups:
        optimizer.add_param_group(g)
