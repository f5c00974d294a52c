"""Run diagnostics: peak memory per stage of a training step (`--memory-profile`) and a torch.profiler trace
of a few steps (`--profile N`). docs/BENCHMARKS.md ("Profiling") shows how to read them and how to wrap
`aam pretrain` in Nsight Systems / Compute or rocprofv3."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from aam.training.memory import MB, PeakMeter
from aam.utils.io import write_json, write_text_atomic

log = logging.getLogger("aam")

STAGES = ("data", "asv_encoder", "sample_encoder", "loss", "backward", "optimizer")
MEMORY_PROFILE_STEPS = 5  # micro-batches measured by --memory-profile, from the first (which creates AdamW state)
TOP_OPS = 25


NVTX_ENV = "AAM_NVTX"


def op_ranges(device: torch.device) -> contextlib.AbstractContextManager:
    """With AAM_NVTX=1 on a GPU, every op (aten:: and aam::) becomes an NVTX range (roctx on ROCm), so Nsight
    Systems and rocprofv3 show which op launched each kernel; otherwise nothing."""
    if os.environ.get(NVTX_ENV) == "1" and device.type == "cuda":
        return torch.autograd.profiler.emit_nvtx(record_shapes=False)
    return contextlib.nullcontext()


class StageMemory:
    """Peak memory of each stage of `steps` micro-batches: `enter(stage)` closes the stage that runs and starts
    the next one at a fresh peak. Peaks are absolute (what the device holds); `rise` is the growth within the
    stage."""

    def __init__(self, meter: PeakMeter, steps: int = MEMORY_PROFILE_STEPS) -> None:
        self.meter, self.steps = meter, steps
        self.peak = dict.fromkeys(STAGES, 0)
        self.rise = dict.fromkeys(STAGES, 0)
        self.current: str | None = None
        self.start = 0
        self.seen = 0

    @property
    def active(self) -> bool:
        return self.seen < self.steps

    def enter(self, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(stage)
        self._close()
        if self.active:
            self.current, self.start = stage, self.meter.reset()

    def end_step(self) -> None:
        self._close()
        self.seen += 1

    def _close(self) -> None:
        if self.current is not None:
            peak = self.meter.peak()
            self.peak[self.current] = max(self.peak[self.current], peak)
            self.rise[self.current] = max(self.rise[self.current], peak - self.start)
            self.current = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.meter.source, "device": str(self.meter.device), "micro_batches": self.steps,
                "stages": {s: {"peak_mb": self.peak[s] / MB, "rise_mb": self.rise[s] / MB} for s in STAGES}}

    def table(self) -> str:
        rows = [f"peak memory per stage ({self.meter.source}, the first {self.steps} micro-batches):",
                f"  {'stage':<15} {'peak MB':>10} {'rise MB':>10}"]
        for s in STAGES:
            shown = "cached" if s == "asv_encoder" and self.peak[s] == 0 else f"{self.peak[s] / MB:10.1f}"
            rows.append(f"  {s:<15} {shown:>10} {self.rise[s] / MB:10.1f}")
        return "\n".join(rows)

    def write(self, out_dir: Path, writer: Any = None, step: int = 0) -> Path:
        path = out_dir / "memory_profile.json"
        write_json(path, self.to_dict())
        log.info("%s\n(written to %s)", self.table(), path)
        if writer is not None:
            for s in STAGES:
                writer.add_scalar(f"memory/{s}_peak_mb", self.peak[s] / MB, step)
        return path


class StepProfiler:
    """torch.profiler over `steps` micro-batches after one warm-up: a Chrome trace (open in chrome://tracing or
    https://ui.perfetto.dev) and a table of the top ops by self time, in `out_dir`/profile/."""

    def __init__(self, steps: int, device: torch.device, out_dir: Path) -> None:
        self.steps, self.device, self.dir = steps, device, out_dir / "profile"
        self.seen = 0
        self.prof: torch.profiler.profile | None = None

    @property
    def active(self) -> bool:
        return self.seen <= self.steps

    def end_step(self) -> None:
        """Call after each micro-batch: starts after the first, stops and writes after `steps` more."""
        self.seen += 1
        if self.seen == 1:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities, record_shapes=True)
            self.prof.__enter__()
        elif self.seen == self.steps + 1 and self.prof is not None:
            self.prof.__exit__(None, None, None)
            self.write()

    def write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        trace = self.dir / "trace.json"
        self.prof.export_chrome_trace(str(trace))
        key = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = self.prof.key_averages().table(sort_by=key, row_limit=TOP_OPS)
        write_text_atomic(self.dir / "top_ops.txt", table + "\n")
        log.info("--profile: %d micro-batches traced to %s; top ops by self time in %s", self.steps, trace,
                 self.dir / "top_ops.txt")
        self.prof = None

    def close(self) -> None:
        """Stop a trace that the run ended before finishing (fewer batches than --profile)."""
        if self.prof is None:
            return
        self.prof.__exit__(None, None, None)
        self.steps = self.seen - 1
        if self.steps > 0:
            self.write()
        else:
            log.warning("--profile: the run ended after its first micro-batch (the warm-up); nothing was traced")
        self.prof = None


class Diagnostics:
    """What the trainer reports about its own steps: `--memory-profile` (stage peaks; forward hooks on the ASV
    encoder mark its stage) and `--profile N` (a trace). The trainer calls `stage(name)` as a step moves on,
    `end_micro_batch` after each micro-batch and `close` at the end of the run."""

    def __init__(self, memory_profile: bool, profile_steps: int, device: torch.device, model: torch.nn.Module,
                 out_dir: Path, write: bool = True) -> None:
        self.out_dir, self.write = out_dir, write
        self.memory = StageMemory(PeakMeter(device)) if memory_profile else None
        self.trace = StepProfiler(profile_steps, device, out_dir) if profile_steps else None
        self.hooks: list[Any] = []
        encoder = getattr(model, "asv_encoder", None)
        if self.memory is not None and encoder is not None:
            self.hooks = [encoder.register_forward_pre_hook(lambda *_: self.stage("asv_encoder")),
                          encoder.register_forward_hook(lambda *_: self.stage("sample_encoder"))]

    def stage(self, name: str) -> None:
        if self.memory is not None and self.memory.active:
            self.memory.enter(name)

    def end_micro_batch(self, writer: Any, step: int) -> None:
        if self.memory is not None and self.memory.active:
            self.memory.end_step()
            if self.memory.active:
                self.memory.enter("data")
            else:
                self._finish_memory(writer, step)
        if self.trace is not None and self.trace.active:
            self.trace.end_step()

    def _finish_memory(self, writer: Any, step: int) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        if self.write and self.memory is not None and self.memory.seen > 0:
            self.memory.write(self.out_dir, writer, step)
        self.memory = None

    def close(self, writer: Any, step: int) -> None:
        """End of the run: write a memory profile or trace that fewer micro-batches than asked for cut short."""
        if self.memory is not None:
            self.memory.steps = self.memory.seen
            self._finish_memory(writer, step)
        if self.trace is not None:
            self.trace.close()
            self.trace = None
