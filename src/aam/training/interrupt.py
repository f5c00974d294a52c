"""Stopping a training run cleanly. While the loop runs, SIGINT (Ctrl-C), SIGTERM and SIGUSR1 (a scheduler's
preemption notice: SLURM's `--signal`, torchrun forwarding SIGTERM) set a flag that the loop reads at each
optimizer step, where it saves last.pt and stops; a second Ctrl-C stops at once. Under torch.distributed the
ranks agree on the flag at every step (`StopRequest.agree`), so all of them stop after the same step.

Preemption (SIGTERM, SIGUSR1) exits 0, so a job script can requeue and continue with `--resume auto`;
Ctrl-C exits 130."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from aam.errors import Interrupted

log = logging.getLogger("aam")

PREEMPTION_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)
STOP_SIGNALS = (signal.SIGINT, *PREEMPTION_SIGNALS)


@dataclass
class StopRequest:
    signum: int | None = None  # the signal that asked the loop to stop

    @property
    def asked(self) -> bool:
        return self.signum is not None

    def agree(self, world: int, device: torch.device) -> bool:
        """Whether any rank was asked to stop (every rank then stops; one small all-reduce)."""
        if world > 1:
            flag = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if int(flag) and not self.asked:
                self.signum = int(flag)
        return self.asked

    def raise_if_asked(self, where: str, checkpoint: str) -> None:
        """Interrupted once the loop has stopped and saved: the CLI exits 0 after a preemption signal (the job
        can be requeued) and 128 + the signal number otherwise."""
        if self.signum is None:
            return
        name = signal.Signals(self.signum).name
        if self.signum in PREEMPTION_SIGNALS:
            raise Interrupted(f"{name} (preemption): stopped at {where}; {checkpoint} is saved: requeue the job or "
                              "rerun the command with --resume auto to continue", self.signum, preempted=True)
        raise Interrupted(f"{name}: stopped at {where}; {checkpoint} is saved: rerun the command with --resume "
                          "auto (or --resume <output-dir>/checkpoints/last.pt) to continue", self.signum)


@contextlib.contextmanager
def stop_on_signal(request: StopRequest, enabled: bool = True) -> Iterator[None]:
    """Route SIGINT/SIGTERM/SIGUSR1 to `request` while the block runs (a no-op when not enabled or off the main
    thread)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask(signum: int, frame: Any) -> None:
        if request.asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.signum = signum
        log.warning("%s: saving last.pt at the next step, then stopping (Ctrl-C again stops at once)",
                    signal.Signals(signum).name)

    previous = {s: signal.signal(s, ask) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
