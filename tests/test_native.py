"""aam.native: a source checkout (PYTHONPATH=src) finds the Triton kernels as `aam.kernels` in <repo>/kernels
without any link in src/aam, and an installed aam/kernels (the wheel) takes precedence."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from aam import native

REPO = Path(__file__).resolve().parents[1]
CHILD = r"""
import importlib.util, sys
import aam.kernels
print(aam.kernels.__file__)
print(importlib.util.find_spec("aam.kernels.attention").origin)  # located, not imported (no triton needed)
print(any(type(f).__name__ == "KernelsFinder" for f in sys.meta_path))
"""


def _checkout(root: Path) -> Path:
    """A copy of the source checkout's Python files: <root>/src/aam (no compiled modules, no kernels link),
    <root>/kernels, <root>/pyproject.toml."""
    shutil.copytree(REPO / "src" / "aam", root / "src" / "aam",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "kernels"))
    shutil.copytree(REPO / "kernels", root / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def _run_child(src: Path) -> list[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(src), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()


def test_source_checkout_finds_kernels_without_a_link(tmp_path):
    root = _checkout(tmp_path)
    assert not (root / "src" / "aam" / "kernels").exists()
    kernels_init, attention, finder = _run_child(root / "src")
    assert Path(kernels_init) == root / "kernels" / "__init__.py"
    assert Path(attention) == root / "kernels" / "attention.py"
    assert finder == "True"


def test_installed_kernels_beside_the_package_win(tmp_path):
    root = _checkout(tmp_path)
    installed = root / "src" / "aam" / "kernels"
    shutil.copytree(root / "kernels", installed)  # what the wheel installs
    kernels_init, attention, _ = _run_child(root / "src")
    assert Path(kernels_init) == installed / "__init__.py"
    assert Path(attention) == installed / "attention.py"


def test_no_fallback_outside_a_source_checkout(tmp_path):
    root = _checkout(tmp_path)
    (root / "pyproject.toml").unlink()  # src/aam without a project around it, e.g. an unpacked wheel
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root / "src"), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", "import aam.kernels"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "No module named 'aam.kernels'" in proc.stderr


def test_this_process_imports_the_kernels_from_where_aam_lives():
    import aam.kernels

    pkg = Path(aam.__file__).resolve().parent
    here = Path(aam.kernels.__file__).resolve().parent
    if (pkg / "kernels").exists():  # installed (make test), or an old `make dev` link
        assert here == (pkg / "kernels").resolve()
    else:
        assert native.source_kernels_dir() is not None and here == REPO / "kernels"


def test_dtype_codes_and_missing_module_reason():
    import torch

    assert [native.dtype_code(torch.empty(0, dtype=dt)) for dt in
            (torch.float32, torch.float16, torch.bfloat16, torch.float64)] == [0, 1, 2, 3]
    assert native.load_error("_C_nonexistent").startswith("aam._C_nonexistent not importable")
    mod, reason = native.module_with(torch.device("meta"), "attention_forward")
    assert mod is None and "meta" in reason
