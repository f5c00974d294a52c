"""Environment for child Python processes in tests: they import the same `aam` as the parent.

Tests run against the installed package (`make test`) or the working tree (`PYTHONPATH=src` after
`make dev`); a child must not switch between them, since only one of the two may hold the compiled
modules and the Triton kernels.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import aam


def child_env(**extra: str) -> dict[str, str]:
    """os.environ plus `extra`, with the folder holding the parent's `aam` first on PYTHONPATH."""
    root = str(Path(aam.__file__).resolve().parents[1])
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def pytest_file_in_interpreter(test_file: str) -> None:
    """Re-run `test_file` in a child pytest with TRITON_INTERPRET=1 (it must be set before triton is imported
    and must not leak into the rest of the suite) and assert that its tests passed."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                          env=child_env(TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
