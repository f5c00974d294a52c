"""Environment for child Python processes in tests: they import the same `aam` as the parent.

Tests run against the installed package (`make test`) or the working tree (`PYTHONPATH=src` after
`make dev`); a child must not switch between them, since only one of the two may hold the compiled
modules and the Triton kernels.
"""

from __future__ import annotations

import os
from pathlib import Path

import aam


def child_env(**extra: str) -> dict[str, str]:
    """os.environ plus `extra`, with the folder holding the parent's `aam` first on PYTHONPATH."""
    root = str(Path(aam.__file__).resolve().parents[1])
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env
