"""Memory you can plan: what a training step holds, measured on the device and fitted to a batch's shape.

A packed batch is described by its `BatchShape` (samples B, unique ASVs U of token width Lb, sample x ASV
entries E). The peak of one training step (forward, backward, optimizer step) is modelled as

    peak = resident + a * U*Lb + b * E + c * B^2 + d

`resident` is what lives between steps (the process, the model, its gradients and AdamW state, the data);
the ASV encoder's activations grow with its tokens U*Lb, the sample encoder's with its entries E, and the
pairwise UniFrac loss with the B^2 pairs of the batch. `fit_by_probing` measures a few probe steps on the
real device with `PeakMeter` and fits a, b, d (non-negative least squares); c is analytic (the loss keeps a
few fp32 [B, B] matrices), because probes of small batches cannot see it.

`PeakMeter` reads the high-water mark: the CUDA/ROCm caching allocator's peak on GPUs, the process's peak
resident set (VmHWM, reset through /proc/self/clear_refs, after returning freed heap to the OS) on Linux CPUs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from aam.errors import AAMError

LOSS_BYTES_PER_PAIR = 16  # fp32 target, distances, coefficients and their gradient: 4 [B, B] matrices
ADAM_STATES = 2  # exp_avg and exp_avg_sq per trainable parameter
GB = 1024**3
MB = 1024**2


@dataclass(frozen=True)
class BatchShape:
    """What a packed batch holds: samples, unique ASVs and their token width, sample x ASV entries."""

    samples: int
    unique_asvs: int
    token_width: int
    entries: int

    @property
    def nucleotide_tokens(self) -> int:
        """Tokens the ASV encoder runs on (U x Lb): what `--max-tokens` bounds."""
        return self.unique_asvs * self.token_width

    @classmethod
    def of_batch(cls, batch: dict[str, Any]) -> BatchShape:
        tokens = batch["tokens"]
        return cls(len(batch["sample_ids"]), int(tokens.shape[0]), int(tokens.shape[1]), int(batch["asv_index"].numel()))


# ------------------------------------------------------------------------------------------ measuring
def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc() if sys.platform.startswith("linux") else None


def _proc_kb(key: str, path: str = "/proc/self/status") -> int:
    """A `Key: N kB` line of a /proc file (VmRSS, VmHWM of /proc/self/status; MemAvailable of /proc/meminfo)."""
    with open(path) as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def cpu_peak_resettable() -> bool:
    """True where the process's peak resident set can be reset (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _proc_kb("VmHWM")
        return True
    except (OSError, KeyError):
        return False


class PeakMeter:
    """Peak memory in bytes since the last `reset()`, on one device (CUDA/ROCm allocator or CPU RSS)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.gpu = device.type == "cuda"
        if not self.gpu and not cpu_peak_resettable():
            raise AAMError("measuring peak memory on the CPU needs Linux (/proc/self/clear_refs); on this system "
                           "give --batch-size (and --gradient-accumulation-steps) instead of a memory budget")

    @property
    def source(self) -> str:
        if self.gpu:
            return "ROCm allocator" if torch.version.hip else "CUDA allocator"
        return "CPU resident set (VmHWM)"

    def current(self) -> int:
        if self.gpu:
            return torch.cuda.memory_allocated(self.device)
        return _proc_kb("VmRSS") * 1024

    def reset(self) -> int:
        """Start a new peak at the present usage (returns it); on the CPU, freed heap goes back to the OS first,
        so the next peak measures what the next step allocates."""
        if self.gpu:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self.current()
        if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
            _LIBC.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return self.current()

    def peak(self) -> int:
        if self.gpu:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        return _proc_kb("VmHWM") * 1024

    def capacity(self) -> int:
        """Memory the device has for this run: the GPU's total, or the CPU's available memory plus what this
        process already holds."""
        if self.gpu:
            return torch.cuda.get_device_properties(self.device).total_memory
        return (_proc_kb("VmRSS") + _proc_kb("MemAvailable", "/proc/meminfo")) * 1024


# ------------------------------------------------------------------------------------------ the model
@dataclass
class Probe:
    shape: BatchShape
    peak_bytes: int


@dataclass
class MemoryModel:
    """Peak bytes of a training step from a batch's shape (see the module docstring); JSON-able."""

    device: str
    source: str
    resident_bytes: int
    optimizer_bytes: int  # AdamW state, created by the first optimizer step (probes stop before it)
    bytes_per_token: float
    bytes_per_entry: float
    step_bytes: float
    bytes_per_pair: float = LOSS_BYTES_PER_PAIR
    probes: list[Probe] = field(default_factory=list)

    def predict(self, shape: BatchShape) -> int:
        return int(self.resident_bytes + self.optimizer_bytes + self.step_bytes
                   + self.bytes_per_token * shape.nucleotide_tokens + self.bytes_per_entry * shape.entries
                   + self.bytes_per_pair * shape.samples**2)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["probes"] = [{**asdict(p.shape), "peak_bytes": p.peak_bytes} for p in self.probes]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryModel:
        data = dict(data)
        probes = [Probe(BatchShape(p["samples"], p["unique_asvs"], p["token_width"], p["entries"]), p["peak_bytes"])
                  for p in data.pop("probes", [])]
        return cls(**data, probes=probes)

    def describe(self) -> str:
        return (f"memory model ({self.source}): {self.resident_bytes / MB:.0f} MB resident + "
                f"{self.optimizer_bytes / MB:.1f} MB optimizer state + {self.step_bytes / MB:.0f} MB per step + "
                f"{self.bytes_per_token / 1024:.2f} KB per nucleotide token + {self.bytes_per_entry / 1024:.2f} KB "
                f"per sample x ASV entry + {self.bytes_per_pair:.0f} B per pair")


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    scale = np.maximum(np.abs(a).max(0), 1e-12)  # columns of very different magnitude
    x, _ = nnls(a / scale, b)
    return x / scale


def fit(probes: Sequence[Probe], resident_bytes: int, optimizer_bytes: int, device: str,
        source: str) -> MemoryModel:
    """Fit the per-token, per-entry and per-step bytes to measured probe peaks (above the resident bytes)."""
    if len(probes) < 2:
        raise AAMError("the memory model needs at least 2 probe batches; the training split is too small")
    a = np.array([[p.shape.nucleotide_tokens, p.shape.entries, 1.0] for p in probes], dtype=np.float64)
    b = np.array([p.peak_bytes - resident_bytes - LOSS_BYTES_PER_PAIR * p.shape.samples**2 for p in probes],
                 dtype=np.float64)
    per_token, per_entry, step = _nnls(a, np.maximum(b, 0.0))
    return MemoryModel(device=device, source=source, resident_bytes=int(resident_bytes),
                       optimizer_bytes=int(optimizer_bytes), bytes_per_token=float(per_token),
                       bytes_per_entry=float(per_entry), step_bytes=float(step), probes=list(probes))


def optimizer_state_bytes(model: torch.nn.Module) -> int:
    return ADAM_STATES * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


@contextlib.contextmanager
def untouched(model: torch.nn.Module) -> Iterator[None]:
    """The random state and `model`'s buffers (e.g. the running distance offset a training forward updates) as
    they were before the block: probe steps leave no trace in the run."""
    from aam.training import checkpoint as ckpt

    rng = ckpt.rng_state()
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        yield
    finally:
        ckpt.set_rng_state(rng)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])


def measure_step(meter: PeakMeter, step: Callable[[], None]) -> tuple[int, int]:
    """(resident bytes before, peak bytes during) one call of `step`."""
    before = meter.reset()
    step()
    return before, meter.peak()


def fit_by_probing(meter: PeakMeter, probe: Callable[[int], tuple[BatchShape, Callable[[], None]]],
                   sizes: Sequence[int], budget: int | None, optimizer_bytes: int, device: str,
                   reduce: Callable[[list[int]], list[int]] | None = None) -> MemoryModel:
    """Measure `probe(size)`'s step for each size (smallest first) and fit the model; stops before a size the model
    fitted so far predicts over `budget`. `reduce` combines the (before, peak) measurements of several ranks."""
    probes: list[Probe] = []
    resident = 0
    model = None
    for size in sizes:
        shape, step = probe(size)
        if model is not None and budget is not None and model.predict(shape) > budget:
            break
        before, peak = measure_step(meter, step)
        if reduce is not None:
            before, peak = reduce([before, peak])
        resident = max(resident, before)
        probes.append(Probe(shape, peak))
        if len(probes) >= 2:
            model = fit(probes, resident, optimizer_bytes, device, meter.source)
        del step
    if model is None:
        raise AAMError("the memory model needs at least 2 probe batches; the training split is too small")
    return model


def probe_sizes(n_samples: int, largest: int) -> list[int]:
    """Probe batch sizes: powers of two from 2 up to `largest` (at most the training samples), at least 3."""
    top = max(2, min(largest, n_samples))
    sizes = sorted({min(top, 2**k) for k in range(1, int(math.log2(top)) + 2)})
    if len(sizes) < 3:
        sizes = sorted({max(1, top // 4), max(1, top // 2), top})
    return sizes


