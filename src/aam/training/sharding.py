"""Data parallelism under torchrun: DDP (the default) or FSDP2 (`--distributed fsdp`, `fully_shard` on every
transformer block and the root), gradient-sync control for accumulation, and FSDP's sharded checkpoints.

An FSDP checkpoint is two things: `<name>.pt`, a small torch file written by rank 0 with everything but the
weights (configs, trainer state, RNG) and `sharded: "<name>-step<N>.dcp"`, and that folder, written by every
rank with torch.distributed.checkpoint (model and AdamW state keyed by parameter name). The .pt is replaced
atomically after the folder is complete, and older folders are then removed, so a kill at any point leaves a
readable checkpoint. `materialize` turns the folder into full tensors in one process (`aam predict`/`embed`,
or a resume on any number of ranks)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from aam.errors import InputError

log = logging.getLogger("aam")


def wrap(model: nn.Module, mode: str, device: torch.device, world: int, amp_dtype: torch.dtype | None) -> nn.Module:
    """The training module for `world` ranks: the model itself (one rank, or FSDP, which shards in place) or a
    DDP wrapper. FSDP keeps fp32 master weights and reduces gradients in fp32 under --mixed-precision."""
    if world <= 1:
        return model
    if mode == "ddp":  # TrainConfig allows ddp and fsdp only
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                   find_unused_parameters=True)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from aam.models.encoders import ASVEncoder
    from aam.models.transformer import Block

    # FSDP2 warns when a unit returns a view (the nucleotide logits of a 3-D Linear are one): aam never writes
    # into a unit's output in place, which is what the warning is about
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32 if amp_dtype else None)
    # A frozen ASV encoder stays whole on every rank (no gradient, no optimizer state to shard): it is called on
    # its own to fill the embedding cache, which FSDP allows only for modules outside its units.
    frozen = [m for m in model.modules() if isinstance(m, ASVEncoder) and not any(p.requires_grad for p in m.parameters())]
    ignored = {p for m in frozen for p in m.parameters()}
    blocks = [m for m in model.modules() if isinstance(m, Block) and not any(p in ignored for p in m.parameters())]
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy, ignored_params=ignored or None)
    log.info("FSDP: %d transformer blocks and the root sharded over %d ranks", len(blocks), world)
    return model


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return False
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def no_gradient_sync(model: nn.Module, skip: bool) -> Iterator[None]:
    """Micro-batches that do not end an accumulation group: DDP and FSDP keep gradients local (no all-reduce /
    reduce-scatter); `skip` False or one process: nothing changes."""
    if skip and isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    elif skip and is_fsdp(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def save_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, index: dict[str, Any], step: int,
                 is_main: bool) -> None:
    """Every rank writes its shards of the model and optimizer to `<name>-step<step>.dcp`; rank 0 then writes the
    index `path` (atomically) and removes the older folders of this name."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from aam.training.checkpoint import save_checkpoint

    folder = path.with_name(f"{path.stem}-step{step}.dcp")
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(folder))
    dist.barrier()
    if is_main:
        save_checkpoint(path, {**index, "sharded": folder.name})
        remove_shards(path, keep=folder.name)
    dist.barrier()


def remove_shards(path: Path, keep: str | None = None) -> None:
    """Remove the sharded folders of checkpoint `path` but `keep` (after the index that names it is written)."""
    for old in path.parent.glob(f"{path.stem}-step*.dcp"):
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def optimizer_state_by_name(state: dict[str, Any], optimizer: torch.optim.Optimizer,
                            model: nn.Module) -> dict[str, Any]:
    """A torch optimizer state dict keyed by parameter index -> keyed by parameter name (torch.distributed.
    checkpoint's format), for an optimizer built over `model` as the one that wrote it."""
    names = {id(p): name for name, p in model.named_parameters()}
    index_to_name: dict[int, str] = {}
    groups = []
    for saved, live in zip(state["param_groups"], optimizer.param_groups, strict=True):
        group_names = [names[id(p)] for p in live["params"]]
        index_to_name.update(zip(saved["params"], group_names, strict=True))
        groups.append({**saved, "params": group_names})
    return {"state": {index_to_name[k]: v for k, v in state["state"].items()}, "param_groups": groups}


def materialize(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The index `data` of a sharded checkpoint with full `model_state` and name-keyed `optimizer_state`
    (`optimizer_format: "names"`), read in this process alone."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = path.parent / data["sharded"]
    if not folder.is_dir():
        raise InputError(f"checkpoint {path} is sharded and its folder {folder} is missing; copy the whole "
                         "checkpoints/ folder of the run")
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.pt"
        dcp_to_torch_save(str(folder), str(full))
        state = torch.load(full, map_location="cpu", weights_only=False)
    return {**data, "model_state": state["model"], "optimizer_state": state["optimizer"], "optimizer_format": "names"}


def load_training_state(model: nn.Module, optimizer: torch.optim.Optimizer, data: dict[str, Any]) -> None:
    """Model and optimizer state of a checkpoint into the (possibly FSDP-sharded) training model: by parameter
    name for sharded checkpoints and FSDP models (the full state is split onto this run's ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    from aam.training.checkpoint import strip_prefixes

    by_name = data.get("optimizer_format") == "names"
    if not by_name and not is_fsdp(model):
        model.load_state_dict(strip_prefixes(data["model_state"]))
        optimizer.load_state_dict(data["optimizer_state"])
        return
    optim_state = data["optimizer_state"] if by_name else optimizer_state_by_name(data["optimizer_state"], optimizer,
                                                                                   model)
    set_state_dict(model, optimizer, model_state_dict=strip_prefixes(data["model_state"]), optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True, strict=True))
