"""Loading of the compiled modules (aam._C, aam._C_cuda, aam._C_hip) and the raw-pointer calling convention.

The compiled modules never see a torch.Tensor: they take data pointers, shapes, dtype codes and a
stream handle, so one binary works across torch versions. A module that fails to import is recorded
with its reason, which `aam kernels` prints.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}

_modules: dict[str, ModuleType | None] = {}
_errors: dict[str, str] = {}


def _load(name: str) -> ModuleType | None:
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f"aam.{name}")
        except ImportError as exc:  # not built, or built for another platform
            _modules[name] = None
            _errors[name] = f"aam.{name} not importable ({exc})"
    return _modules[name]


def cpu_module() -> ModuleType | None:
    """aam._C, or None when the package was installed without compiled kernels."""
    return _load("_C")


def gpu_module() -> ModuleType | None:
    """aam._C_hip on ROCm torch, aam._C_cuda on CUDA torch; None when absent or no GPU torch."""
    if torch.version.hip:
        return _load("_C_hip")
    if torch.version.cuda:
        return _load("_C_cuda")
    return None


def load_error(name: str) -> str | None:
    """Why aam.<name> did not load, or None."""
    _load(name)
    return _errors.get(name)


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def stream_handle(device: torch.device) -> int:
    """The current CUDA/HIP stream of `device` as an integer handle (0 on CPU)."""
    if device.type == "cuda":
        return torch.cuda.current_stream(device).cuda_stream
    return 0


def has_triton() -> tuple[bool, str]:
    """Whether Triton imports here; with the reason when it does not."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return False, f"triton not installed ({exc})"
    return True, ""


def auto_skips_triton_interpreter(req: dict) -> str | None:
    """`auto_refusal` of every Triton backend: on the CPU it runs only in the interpreter, which is for tests."""
    return "the triton interpreter is for tests only" if req["device"].type == "cpu" else None


def module_with(device: torch.device, symbol: str) -> tuple[ModuleType | None, str | None]:
    """The compiled module serving `device` if it exports `symbol`, else (None, the reason why not).

    Backend availability checks start here: CPU -> aam._C; CUDA/ROCm -> aam._C_cuda / aam._C_hip.
    """
    if device.type == "cpu":
        name, mod = "_C", cpu_module()
    elif device.type == "cuda":
        name, mod = ("_C_hip" if torch.version.hip else "_C_cuda"), gpu_module()
    else:
        return None, f"no compiled kernels for device type {device.type!r}"
    if mod is None:
        return None, load_error(name) or f"aam.{name} not built for this torch"
    if not hasattr(mod, symbol):
        return None, f"aam.{name} was built without {symbol} (rebuild: pip install . or make dev)"
    return mod, None
