"""The switches of tests/conftest.py that turn skips into failures: AAM_REQUIRE_NATIVE=1 (a test marked
`native` without aam._C) and AAM_REQUIRE_BACKENDS=custom,... (a GPU test of a listed backend without a GPU
or without the backend)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from subprocess_env import child_env

TESTS = Path(__file__).resolve().parent


def _pytest(args: list[str], **env: str) -> tuple[int, str, dict[str, int]]:
    """Run pytest in a child; (exit code, output, {"passed": n, "failed": n, "errors": n, "skipped": n})."""
    environ = child_env(**env)
    for name in ("AAM_REQUIRE_NATIVE", "AAM_REQUIRE_BACKENDS"):
        if name not in env:
            environ.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", *args],
                          env=environ, capture_output=True, text=True, timeout=600, cwd=TESTS.parent)
    out = proc.stdout + proc.stderr
    counts = {k: 0 for k in ("passed", "failed", "errors", "skipped")}
    for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", out.splitlines()[-1] if out else ""):
        counts["errors" if word.startswith("error") else word] = int(n)
    return proc.returncode, out, counts


def test_require_native_fails_where_the_build_is_missing(tmp_path):
    """A test folder whose conftest is this suite's, with aam._C unimportable (a broken C++ build)."""
    (tmp_path / "conftest.py").write_text(
        "import importlib.util, sys\n"
        "sys.modules['aam._C'] = None  # import fails, as with no compiled module\n"
        f"spec = importlib.util.spec_from_file_location('suite_conftest', {str(TESTS / 'conftest.py')!r})\n"
        "suite = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(suite)\n"
        "pytest_runtest_setup = suite.pytest_runtest_setup\n"
        "pytest_runtest_makereport = suite.pytest_runtest_makereport\n")
    (tmp_path / "test_needs_c.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.native('attention_forward')\n"
        "def test_kernel():\n"
        "    pass\n\n"
        "def test_plain():\n"
        "    pass\n")
    code, out, counts = _pytest([str(tmp_path), "-W", "ignore::pytest.PytestUnknownMarkWarning"])
    assert code == 0 and counts["skipped"] == 1 and counts["passed"] == 1, out
    assert "aam._C not built" in out
    code, out, counts = _pytest([str(tmp_path), "-W", "ignore::pytest.PytestUnknownMarkWarning"],
                                AAM_REQUIRE_NATIVE="1")
    assert code != 0 and counts["errors"] + counts["failed"] == 1 and counts["passed"] == 1, out
    assert "AAM_REQUIRE_NATIVE=1 requires aam._C" in out and "aam._C not built" in out


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_require_backends_turns_gpu_skips_into_failures():
    code, out, counts = _pytest(["tests/test_attention_gpu.py"])
    assert code == 0 and counts["skipped"] > 0 and counts["failed"] + counts["errors"] == 0, out
    skipped = counts["skipped"]
    code, out, counts = _pytest(["tests/test_attention_gpu.py"], AAM_REQUIRE_BACKENDS="custom")
    assert code != 0, out
    # every test of the custom backend (and the tests of all backends) fails; triton and sdpa ones still skip
    failed = counts["failed"] + counts["errors"]
    assert failed > 0 and failed + counts["skipped"] == skipped, out
    assert "AAM_REQUIRE_BACKENDS=custom requires custom, but the test was skipped: " in out
    assert "no GPU" in out
    assert not re.search(r"(FAILED|ERROR) \S*-(triton|sdpa)\]", out), out
