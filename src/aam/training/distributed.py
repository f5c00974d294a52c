"""Global pairs across ranks (DDP / FSDP): the pairwise UniFrac loss over the whole global batch.

With data parallelism each rank holds B_r samples. A per-rank loss would only see pairs inside a rank
(sum B_r^2 / 2 of the (sum B_r)^2 / 2 pairs). `global_pairwise_loss` gathers the embeddings and sample
IDs of every rank (`gather_with_grad` keeps the autograd graph), fetches the targets of the whole
global batch by sample ID from the distance source, and computes the loss over every pair. Every rank
computes the same loss value (redundantly: the kernel costs O(B^2 D), small next to the encoder).

Gradient scaling: the backward of `gather_with_grad` all-reduces (sums) the gradient of the gathered
tensor over the ranks and hands each rank the slice of its own samples. Because every rank holds an
identical copy of the loss, that sum is world_size x dL/de_local. DDP (and FSDP) then average parameter
gradients over the ranks (divide by world_size), so the gradient each rank applies equals the
single-process gradient of the same global batch exactly; no extra factor is needed. Without
DDP/FSDP averaging (e.g. summing gradients by hand), divide by the world size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from aam.ops.pairwise_loss import pairwise_unifrac_loss
from aam.utils.runtime import resolve_device


class DistanceSource(Protocol):
    def pairs(self, sample_ids: list[str]) -> np.ndarray: ...


def distributed_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """Under torchrun (WORLD_SIZE > 1) start the process group (NCCL on GPUs, gloo on the CPU); returns
    (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, resolve_device(device_name)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device_name in ("auto", "cuda"):
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "nccl"
    else:
        device = resolve_device(device_name)
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return dist.get_rank(), world, device


def max_over_ranks(values: list[int], device: torch.device) -> list[int]:
    """The element-wise largest of `values` over all ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def is_distributed(group: Any = None) -> bool:
    """True when torch.distributed is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any) -> torch.Tensor:
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
        counts = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(counts, n, group=group)
        sizes = [int(c) for c in counts]
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        bufs = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(bufs, padded, group=group)
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return torch.cat([buf[:s] for buf, s in zip(bufs, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_with_grad(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """All-gather along dim 0 (ranks may hold different counts) keeping gradients.

    The result is the concatenation in rank order. In backward, the gradients of every rank's copy are
    summed and each rank receives the slice of its own rows (see the module docstring for scaling).
    Without an initialised process group (or with one rank) returns x unchanged.
    """
    if not is_distributed(group):
        return x
    return _GatherWithGrad.apply(x, group)


def gather_ids(sample_ids: list[str], group: Any = None) -> list[str]:
    """Sample IDs of every rank, concatenated in rank order (the order of gather_with_grad)."""
    if not is_distributed(group):
        return list(sample_ids)
    parts: list[list[str] | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, list(sample_ids), group=group)
    return [sid for part in parts for sid in (part or [])]


def global_targets(
    ids: list[str], distance_source: DistanceSource, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Targets [B, B] of the global batch by sample ID, and pair weights (None when every pair is valid).

    A pair gets weight 0 when its target is not finite, or when both entries are the same sample
    (DistributedSampler pads the last batch by repeating samples).
    """
    target = torch.as_tensor(np.asarray(distance_source.pairs(ids)), device=device).to(dtype)
    valid = torch.isfinite(target)
    _, inverse = np.unique(np.asarray(ids, dtype=object).astype(str), return_inverse=True)
    inv = torch.as_tensor(inverse, device=device)
    same = inv[:, None] == inv[None, :]
    same.fill_diagonal_(False)
    valid &= ~same
    if bool(valid.all()):
        return target, None
    return torch.where(valid, target, torch.zeros_like(target)), valid.to(dtype)


def global_pairwise_loss(
    emb_local: torch.Tensor,
    sample_ids_local: list[str],
    distance_source: DistanceSource,
    transform: str = "identity",
    scale: float = 10.0,
    backend: str = "auto",
    group: Any = None,
    adjust_target: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Pairwise UniFrac loss over every pair of the global batch (all ranks); same value on every rank.

    adjust_target(emb_global, target, weights) -> target lets the caller shift the global targets (the
    model's distance offset) exactly as the single-process loss does.

    emb_local [B_r, D]: this rank's embeddings; sample_ids_local: their B_r sample IDs;
    distance_source: anything with `pairs(ids) -> np.ndarray [B, B]`. Works without torch.distributed
    (then it is the plain loss of the local batch).
    """
    if len(sample_ids_local) != emb_local.shape[0]:
        raise ValueError(f"global_pairwise_loss: {len(sample_ids_local)} sample IDs for "
                         f"{emb_local.shape[0]} embeddings")
    emb = gather_with_grad(emb_local, group)
    ids = gather_ids(sample_ids_local, group)
    tdtype = emb.dtype if emb.dtype in (torch.float32, torch.float64) else torch.float32
    target, weights = global_targets(ids, distance_source, emb.device, tdtype)
    if adjust_target is not None:
        target = adjust_target(emb, target, weights)
    return pairwise_unifrac_loss(emb, target, transform, scale, weights, backend=backend)


def finish_distributed() -> None:
    """End a torchrun job cleanly: every rank meets at a barrier, then the process group is destroyed.

    Leaving with a live gloo group can deadlock at interpreter exit (its worker thread needs the GIL
    while the main thread tears the group down); callers drop their DDP wrappers first.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
