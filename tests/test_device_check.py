"""benchmarks/device_check.sh runs every step, and its exit code says whether the build and the parity steps
passed; benchmark failures and timeouts are reported only. Here, without a GPU, with a stub `cmake`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from subprocess_env import child_env

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_check.sh"


def _device_check(tmp_path: Path, cmake_rc: int, **env: str) -> tuple[int, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cmake", "nvcc"):  # the build fails (or succeeds) without compiling anything
        stub = bin_dir / tool
        stub.write_text(f"#!/bin/sh\necho \"stub {tool} $*\"\nexit {cmake_rc}\n")
        stub.chmod(0o755)
    environ = child_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable,
                        PARITY_TIMEOUT="300", VARLEN_TIMEOUT="300", BENCH_TIMEOUT="1", **env)
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def _rc(out: str, step: str) -> int:
    return int(re.search(rf"^{step}: rc=(\d+)$", out, re.M).group(1))


@pytest.mark.slow
def test_failed_build_fails_the_script_after_running_every_step(tmp_path):
    code, out = _device_check(tmp_path, cmake_rc=1, AAM_REQUIRE_BACKENDS="")
    assert code != 0, out
    assert _rc(out, "build") == 1
    assert _rc(out, "kernels") == 0 and _rc(out, "parity") == 0 and _rc(out, "parity_varlen") == 0, out
    assert "bench_packing: rc=" in out  # the steps after the build still ran
    assert re.search(r"^FAILED: build \(rc 1\)$", out, re.M), out


@pytest.mark.slow
def test_parity_steps_decide_and_benchmark_timeouts_do_not(tmp_path):
    code, out = _device_check(tmp_path, cmake_rc=0, AAM_REQUIRE_BACKENDS="custom")
    assert code != 0, out
    assert _rc(out, "build") == 0 and _rc(out, "parity") != 0, out
    assert "AAM_REQUIRE_BACKENDS=custom requires custom" in (tmp_path / "out" / "parity.log").read_text()
    assert _rc(out, "bench_attention") != 0  # killed after 1 s: reported, not counted
    assert re.search(r"^FAILED: parity \(rc \d+\)$", out, re.M), out
