"""`--nproc-per-node N` / `--data-parallel`: start N local DDP workers of the same command through
torch.distributed's own launcher (what `torchrun --standalone --nproc-per-node N` does), so one command
trains on every GPU of a node. Each worker runs the command line without these options, under the
torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""

from __future__ import annotations

import contextvars
import logging
import os
import signal
import sys
import uuid

from aam.errors import AAMError

log = logging.getLogger("aam")

ARGV: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("aam_argv", default=None)
LAUNCH_OPTIONS = ("--nproc-per-node", "--data-parallel")


def worker_argv(argv: list[str]) -> list[str]:
    """The command line each worker runs: `argv` without --nproc-per-node N and --data-parallel."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif arg == "--data-parallel" or arg.startswith("--nproc-per-node="):
            continue
        else:
            out.append(arg)
    return out


def workers_wanted(nproc_per_node: int | None, data_parallel: bool, device: str) -> int:
    """How many local workers to start: --nproc-per-node, or one per visible GPU with --data-parallel."""
    if nproc_per_node is not None:
        return nproc_per_node
    if not data_parallel:
        return 1
    import torch

    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    if gpus < 1:
        raise AAMError("--data-parallel starts one DDP worker per visible GPU and none is visible; on the CPU give "
                       "--nproc-per-node N")
    log.info("--data-parallel: %d DDP workers (one per GPU); the pairwise loss covers every pair of the global "
             "batch, as the reference AAM's nn.DataParallel did, and --batch-size is per worker", gpus)
    return gpus


def launch(n: int) -> int:
    """Run this command's argv in `n` local workers; the exit code of the job (0 after a preemption)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    argv = ARGV.get()
    if argv is None:
        raise AAMError("--nproc-per-node works from the aam command line (aam.cli.main.main)")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=f"aam-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    # SLURM's --signal sends SIGUSR1, which the launcher does not handle: turn it into the SIGTERM it forwards
    previous = signal.signal(signal.SIGUSR1, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    try:
        elastic_launch(config, sys.executable)("-m", "aam.cli.main", *worker_argv(argv))
    except SignalException as exc:  # the workers got the signal too: they saved last.pt and stopped
        return 0 if exc.sigval in (signal.SIGTERM, signal.SIGUSR1) else 128 + int(exc.sigval)
    except ChildFailedError as exc:
        first = next(iter(exc.failures.values()))
        raise AAMError(f"{len(exc.failures)} of {n} workers failed (worker {first.local_rank}: exit code "
                       f"{first.exitcode}); their errors are above") from None
    finally:
        signal.signal(signal.SIGUSR1, previous)
    return 0


def maybe_launch(options: dict) -> int | None:
    """Start the local workers when the command asks for several and is not a worker itself; None otherwise."""
    n = workers_wanted(options.get("nproc_per_node"), bool(options.get("data_parallel")), options.get("device", "auto"))
    if n < 1:
        raise AAMError(f"--nproc-per-node must be >= 1, got {n}")
    if n == 1 or "WORLD_SIZE" in os.environ:
        return None
    return launch(n)
