"""Several gloo ranks on the CPU in a test: `run_ranks(worker, args, world, timeout, what)` spawns
`worker(rank, port, *args)` on `world` processes (each joins the process group at tcp://127.0.0.1:port) and
fails the test when a rank fails or they do not finish within `timeout` seconds."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker: Callable, args: tuple, world: int, timeout: float, what: str) -> None:
    ctx = mp.spawn(worker, args=(free_port(), *args), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):  # raises if a rank failed
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"{what} did not finish within {timeout:.0f} s")
