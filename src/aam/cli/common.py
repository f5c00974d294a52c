"""Helpers shared by the training commands: logging, device, seeding, run summaries."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aam.errors import AAMError

log = logging.getLogger("aam")
_HANDLERS: list[logging.Handler] = []


def setup_logging(output_dir: Path | None, filename: str = "training.log") -> None:
    """INFO to stderr and (if given) to <output_dir>/training.log; replaces handlers of an earlier call."""
    root = logging.getLogger("aam")
    for h in _HANDLERS:
        root.removeHandler(h)
        h.close()
    _HANDLERS.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    _HANDLERS.append(stream)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(output_dir) / filename)
        fh.setFormatter(fmt)
        _HANDLERS.append(fh)
    for h in _HANDLERS:
        root.addHandler(h)
    root.setLevel(logging.INFO)
    root.propagate = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise AAMError(f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AAMError(f"--device {name} requested but CUDA is not available here; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """Under torchrun (WORLD_SIZE > 1) start the process group; returns (rank, world, device)."""
    import os

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
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)
    return torch.distributed.get_rank(), world, device


def write_text_atomic(path: Path, text: str) -> None:
    """Write to `<path>.tmp` and rename, so a killed run never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_lines(path: Path, lines: list[str]) -> None:
    write_text_atomic(path, "".join(f"{x}\n" for x in lines))


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def summarize(history: list[dict[str, float]], keys: list[str]) -> str:
    if not history:
        return "no epoch finished"
    last = history[-1]
    return ", ".join(f"{k}={last[k]:.4g}" for k in keys if k in last)
