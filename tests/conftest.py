"""Shared fixtures and markers.

- Real-data tests are marked `realdata` and skip when ../shared/data is absent.
- `@pytest.mark.native(symbol)`: the test needs the compiled CPU module aam._C (exporting `symbol`, when
  given); without it the test is skipped with the reason.
- `@pytest.mark.gpu(*backends)`: a GPU test of these backends (a test parametrized with `backend` is a test
  of that one backend).
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
