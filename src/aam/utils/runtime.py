"""Process set-up shared by every command: logging to stderr and a run folder, seeding, device names."""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import numpy as np
import torch

from aam.errors import AAMError

_HANDLERS: list[logging.Handler] = []


def setup_logging(output_dir: str | Path | None, filename: str = "training.log", quiet: bool = False) -> None:
    """INFO to stderr and (if given) to <output_dir>/<filename>; replaces the handlers of an earlier call.
    `quiet` (ranks other than 0): only warnings and errors reach stderr, so a torchrun job logs each line once."""
    root = logging.getLogger("aam")
    for h in _HANDLERS:
        root.removeHandler(h)
        h.close()
    _HANDLERS.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    stream.setLevel(logging.WARNING if quiet else logging.INFO)
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
    """`auto` (cuda when available, else cpu), cpu, cuda or cuda:N; a one-line error for anything else."""
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
