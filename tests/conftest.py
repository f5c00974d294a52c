"""Shared fixtures. Real-data tests are marked `realdata` and skip when ../shared/data is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AAM_SHARED_DATA", REPO.parent / "shared" / "data"))
IBD = SHARED_DATA / "ibd-2538"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IBD.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real data not found at {IBD} (set AAM_SHARED_DATA to its parent)")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch) -> None:
    monkeypatch.setenv("AAM_NO_PROGRESS", "1")  # tqdm bars would clutter the test log


@pytest.fixture
def ibd_dir() -> Path:
    return IBD
