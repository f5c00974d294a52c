"""How the training forward runs: `--compile-model` (torch.compile, falling back to eager where it cannot run),
`--tf32`, and which precision `--mixed-precision auto` means on this device."""

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


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # CPUs whose bf16 matmuls beat fp32 (AVX2-only ones run bf16 slower)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(requested: str, device: torch.device) -> str:
    """`--mixed-precision auto` -> bf16 on GPUs that support it and on CPUs with AVX512-BF16 or AMX-BF16, where
    bf16 matmuls run faster than fp32 (benchmarks/bench_roofline.py: 1.9x a pretraining step on an AVX512-BF16
    EPYC); none elsewhere. Other values pass through."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        chosen, why = ("bf16", "the GPU supports bf16") if torch.cuda.is_bf16_supported() else ("none", "no bf16")
    else:
        has = sorted(set(BF16_CPU_FLAGS) & cpu_flags())
        chosen, why = ("bf16", f"this CPU has {', '.join(has)}") if has else (
            "none", "this CPU has no AVX512-BF16/AMX-BF16: bf16 would be slower than fp32")
    log.info("--mixed-precision auto: %s (%s)", chosen, why)
    return chosen
