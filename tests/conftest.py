"""Shared fixtures and the switches that turn skips into failures.

- Real-data tests are marked `realdata` and skip when ../shared/data is absent.
- `@pytest.mark.native(symbol)`: the test needs the compiled CPU module aam._C (exporting `symbol`, when
  given). Without it the test is skipped with the reason; with AAM_REQUIRE_NATIVE=1 (`make test`) it
  fails instead, so a broken C++ build cannot pass as a green run of skips.
- `@pytest.mark.gpu(*backends)`: a GPU test of these backends (a test parametrized with `backend` is a test
  of that one backend). With AAM_REQUIRE_BACKENDS=custom,triton (benchmarks/device_check.sh) every skip of
  a test of a listed backend (no GPU, backend not built or not loaded) is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AAM_SHARED_DATA", REPO.parent / "shared" / "data"))
IBD = SHARED_DATA / "ibd-2538"
NAN = float("nan")


def _required_backends() -> set[str]:
    return {b.strip() for b in os.environ.get("AAM_REQUIRE_BACKENDS", "").split(",") if b.strip()}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IBD.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real data not found at {IBD} (set AAM_SHARED_DATA to its parent)")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("native")
    if marker is not None:
        from aam import native

        symbol = marker.args[0] if marker.args else None
        mod = native.cpu_module()
        if mod is None:
            pytest.skip(f"aam._C not built (make dev): {native.load_error('_C')}")
        if symbol is not None and not hasattr(mod, symbol):
            pytest.skip(f"aam._C was built without {symbol} (make dev)")


def _why_required(item: pytest.Item, reason: str) -> str | None:
    """The switch that makes a skip of `item` (for `reason`) a failure, or None. AAM_REQUIRE_NATIVE concerns the
    skips for a missing aam._C only: a real-data test still skips when ../shared is absent."""
    if item.get_closest_marker("native") is not None and os.environ.get("AAM_REQUIRE_NATIVE") == "1" \
            and reason.startswith("aam._C"):
        return "AAM_REQUIRE_NATIVE=1 requires aam._C"
    marker = item.get_closest_marker("gpu")
    required = _required_backends()
    if marker is None or not required:
        return None
    params = getattr(item, "callspec", None)
    backends = {params.params["backend"]} if params is not None and "backend" in params.params else set(marker.args)
    hit = sorted(backends & required)
    if hit:
        return f"AAM_REQUIRE_BACKENDS={','.join(sorted(required))} requires {', '.join(hit)}"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        why = _why_required(item, reason)
        if why:
            report.outcome = "failed"
            report.longrepr = f"{why}, but the test was skipped: {reason}"
    return report


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch) -> None:
    monkeypatch.setenv("AAM_NO_PROGRESS", "1")  # tqdm bars would clutter the test log


@pytest.fixture
def ibd_dir() -> Path:
    return IBD


@pytest.fixture
def poison_outputs(monkeypatch):
    """poison_outputs(*modules): each module's `_empty` (the output allocation of the compiled and Triton
    backends) returns NaN-filled tensors for the rest of the test, so an unwritten element shows up."""

    def empty(shape, dtype, device="cpu"):
        return torch.full(tuple(shape), NAN, dtype=dtype, device=device)

    def poison(*modules) -> None:
        for module in modules:
            monkeypatch.setattr(module, "_empty", empty)

    return poison
