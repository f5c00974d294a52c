"""How the training forward runs: `--compile-model` (torch.compile, falling back to eager where it cannot run)
and `--tf32`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

log = logging.getLogger("aam")
T = TypeVar("T")


def compile_or_none(model: nn.Module, backend: str) -> nn.Module | None:
    """torch.compile(model), or None (eager) on ROCm or when compilation cannot start."""
    if torch.version.hip:
        log.warning("--compile-model skipped on ROCm (torch.compile is unreliable there); running eagerly")
        return None
    try:
        compiled = torch.compile(model, backend=backend)
    except Exception as exc:  # noqa: BLE001 - any compiler setup failure falls back to eager
        log.warning("--compile-model failed (%s: %s); running eagerly", type(exc).__name__, exc)
        return None
    log.info("--compile-model: training forward compiled with backend %s", backend)
    return compiled


class CompiledForward:
    """Runs a forward through the compiled module when there is one; a failure of its first call (where
    compilation happens) drops it and runs the eager module, with a warning. Checkpoints keep saving the
    eager model (no `_orig_mod.` prefixes)."""

    def __init__(self, module: nn.Module | None) -> None:
        self.module = module
        self.checked = False

    def __call__(self, run: Callable[[nn.Module], T], eager: nn.Module) -> T:
        if self.module is not None:
            try:
                result = run(self.module)
                self.checked = True
                return result
            except Exception as exc:  # noqa: BLE001
                if self.checked:
                    raise
                log.warning("--compile-model: compilation failed (%s: %s); running eagerly",
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                self.module = None
        return run(eager)


def allow_tf32(device: torch.device) -> None:
    """--tf32: float32 matmuls on TF32 tensor cores (CUDA only)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        log.info("--tf32: float32 matmuls use TF32 tensor cores")
    else:
        log.info("--tf32 has no effect on %s (CUDA only)", device)
