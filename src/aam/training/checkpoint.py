"""Checkpoints: atomic writes, self-describing contents, one-line errors for missing/corrupt/wrong files.

A checkpoint is a dict with `format` ("aam-checkpoint"), `format_version`, `kind` ("pretrain"|"train"),
`model_config` (ModelConfig.to_dict), `model_state`, `preprocessing` (everything predict needs to
prepare a table exactly as in training), `versions`, and for resuming `optimizer_state`,
`scheduler_state`, `scaler_state`, `trainer_state` (epoch, step, best metric, ...) and `rng_state`.
"""

from __future__ import annotations

import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aam.errors import InputError
from aam.utils.io import atomic_path

FORMAT = "aam-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "kind", "model_config", "model_state", "preprocessing")


def versions() -> dict[str, str]:
    import aam

    return {"aam": str(getattr(aam, "__version__", "unknown")), "torch": str(torch.__version__),
            "numpy": str(np.__version__), "python": platform.python_version()}


def plain(obj: Any) -> Any:
    """Numpy scalars/arrays and tuples -> Python types, so `torch.load(weights_only=True)` reads the file."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically (utils.io.atomic_path), so a crash never leaves a half-written checkpoint."""
    data = plain({"format": FORMAT, "format_version": FORMAT_VERSION, "versions": versions(), **payload})
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read and validate a checkpoint; `kind` ("pretrain"/"train") is the producer the caller needs."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path} (give the path of a best.pt or last.pt that aam wrote)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbage files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read checkpoint {path}: the file is corrupted or not a torch file ({reason[:120]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path} is not an aam checkpoint (no '{FORMAT}' marker); use a file written by aam pretrain/train")
    if data.get("sharded"):  # an FSDP run's index: the weights are in the folder it names
        from aam.training.sharding import materialize

        data = materialize(path, data)
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise InputError(f"checkpoint {path} lacks {missing}; it is incomplete or from another aam version")
    if data["format_version"] > FORMAT_VERSION:
        raise InputError(f"checkpoint {path} has format version {data['format_version']}; upgrade aam to read it")
    if kind is not None and data["kind"] != kind:
        made_by = {"pretrain": "aam pretrain (a SequenceEncoder)", "train": "aam train (a SequencePredictor)"}
        raise InputError(f"checkpoint {path} was written by {made_by.get(data['kind'], data['kind'])}; "
                         f"this command needs one from {made_by.get(kind, kind)}")
    return data


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out
