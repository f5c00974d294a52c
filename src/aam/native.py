"""The code that is not plain Python: the compiled modules (aam._C, aam._C_cuda, aam._C_hip) and the
Triton kernels (aam.kernels). Any layer may use this module; it imports nothing else from aam and
imports torch only inside the functions that need it.

Compiled modules never see a torch.Tensor: they take data pointers, shapes, dtype codes and a stream
handle, so one binary works across torch versions. A module that fails to import is recorded with its
reason, which `aam kernels` prints.

The Triton kernels live in the repository's top-level `kernels/` folder; the wheel installs them as
`aam.kernels` beside the package. In a source checkout (PYTHONPATH=src) nothing is installed there, so
`KernelsFinder` (on sys.meta_path from `import aam`) maps `aam.kernels` onto `<repo>/kernels`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

MODULES = ("_C", "_C_cuda", "_C_hip")

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
    import torch

    if torch.version.hip:
        return _load("_C_hip")
    if torch.version.cuda:
        return _load("_C_cuda")
    return None


def load_error(name: str) -> str | None:
    """Why aam.<name> did not load, or None."""
    _load(name)
    return _errors.get(name)


def dtype_code(t: Any) -> int:
    """The compiled modules' code of a tensor's dtype: fp32 0, fp16 1, bf16 2, fp64 3."""
    import torch

    return {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}[t.dtype]


def stream_handle(device: Any) -> int:
    """The current CUDA/HIP stream of `device` as an integer handle (0 on CPU)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.current_stream(device).cuda_stream
    return 0


def module_with(device: Any, symbol: str) -> tuple[ModuleType | None, str | None]:
    """The compiled module serving `device` if it exports `symbol`, else (None, the reason why not).

    Backend availability checks start here: CPU -> aam._C; CUDA/ROCm -> aam._C_cuda / aam._C_hip.
    """
    import torch

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


# ---- Triton kernels ------------------------------------------------------------------------------


def has_triton() -> tuple[bool, str]:
    """Whether Triton imports here; with the reason when it does not."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return False, f"triton not installed ({exc})"
    return True, ""


def triton_kernels(name: str) -> ModuleType:
    """aam.kernels.<name> (imports triton)."""
    return importlib.import_module(f"aam.kernels.{name}")


def source_kernels_dir() -> Path | None:
    """<repo>/kernels when this package runs from a source checkout (<repo>/src/aam), else None."""
    pkg = Path(__file__).resolve().parent
    repo = pkg.parents[1]
    kernels = repo / "kernels"
    if pkg.parent.name == "src" and (repo / "pyproject.toml").is_file() and (kernels / "__init__.py").is_file():
        return kernels
    return None


class KernelsFinder(importlib.abc.MetaPathFinder):
    """Finds `aam.kernels` in <repo>/kernels when no aam/kernels is installed beside the package.

    It sits at the end of sys.meta_path, so an installed aam/kernels (the wheel) always wins; the
    submodules (aam.kernels.attention, ...) then load from the package's __path__ as usual.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "aam.kernels":
            return None
        kernels = source_kernels_dir()
        if kernels is None:
            return None
        return importlib.util.spec_from_file_location(fullname, kernels / "__init__.py",
                                                      submodule_search_locations=[str(kernels)])


def install_kernels_finder() -> None:
    """Put one KernelsFinder at the end of sys.meta_path (idempotent)."""
    if not any(isinstance(f, KernelsFinder) for f in sys.meta_path):
        sys.meta_path.append(KernelsFinder())
