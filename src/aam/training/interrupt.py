"""Stopping a training run cleanly: while the loop runs, SIGINT (Ctrl-C) and SIGTERM (e.g. a scheduler's
preemption notice) set a flag that the loop reads at each optimizer step, where it saves last.pt and stops; a
second Ctrl-C stops at once. Single-process runs only: under torchrun the launcher forwards signals to every
rank, which would stop at different steps."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aam.errors import Interrupted

log = logging.getLogger("aam")


@dataclass
class StopRequest:
    signum: int | None = None  # the signal that asked the loop to stop

    @property
    def asked(self) -> bool:
        return self.signum is not None

    def raise_if_asked(self, where: str, checkpoint: str) -> None:
        """Interrupted (the CLI exits 128 + the signal number) once the loop has stopped and saved."""
        if self.signum is not None:
            raise Interrupted(f"{signal.Signals(self.signum).name}: stopped at {where}; {checkpoint} is saved: rerun "
                              "the command with --resume <output-dir>/checkpoints/last.pt to continue", self.signum)


@contextlib.contextmanager
def stop_on_signal(request: StopRequest, enabled: bool) -> Iterator[None]:
    """Route SIGINT/SIGTERM to `request` while the block runs (a no-op when not enabled or off the main thread)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask(signum: int, frame: Any) -> None:
        if request.asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.signum = signum
        log.warning("%s: saving last.pt at the next step, then stopping (Ctrl-C again stops at once)",
                    signal.Signals(signum).name)

    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
