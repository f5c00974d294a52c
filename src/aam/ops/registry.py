"""Backend registry: which implementation of each op runs, and why the others do not.

Every op (masked_attention, pairwise_unifrac_loss, unifrac, dropout, gelu_mlp) registers its backends here with
- `check(req) -> str | None`: None when the backend can run the request (a `KernelRequest`: device and
  dtype plus the shape facts an op's backends decide on, such as `head_dim`), else the reason it cannot;
- `priority`: `auto` tries backends from the highest priority down;
- an optional `self_check(device) -> str | None`, run once per device type before `auto` trusts the
  backend (e.g. SDPA's memory-efficient path on ROCm); a failure is cached with its reason;
- an optional `auto_refusal(req) -> str | None`: a reason `auto` skips a backend that could run (an
  explicit choice still runs it), e.g. the Triton interpreter on the CPU, which is for tests only.

An op may also register one diagnostic check (`register_diagnostic`), which `aam kernels` runs for each
available backend.

`select(op, "auto", req)` returns the first backend that can run and passed its self-check, and logs
each fallback once. `select(op, name, req)` with an explicit name raises BackendUnavailable with the
reason when that backend cannot run. `status(op, req)` lists every backend with its state for
`aam kernels`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from aam.errors import BackendUnavailable
from aam.ops import BACKEND_CHOICES  # noqa: F401 - re-exported: where the backends are chosen

log = logging.getLogger("aam.ops")


@dataclass(frozen=True)
class KernelRequest:
    """What a backend needs to know to say whether it can run a call. Ops fill in the fields they use.

    device, dtype: of the inputs (dtype None: the op's default, e.g. UniFrac's float64).
    Attention: head_dim; long_rows (keys longer than what the CPU kernel beats SDPA on); same_len (as
    many queries as keys); dropout_p; padded (a key mask or lengths is given).
    Pairwise loss: batch (B) and dim (D) of the embeddings.
    """

    device: torch.device
    dtype: torch.dtype | None = None
    head_dim: int | None = None
    long_rows: bool = False
    same_len: bool = True
    dropout_p: float = 0.0
    padded: bool = True
    batch: int | None = None
    dim: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.device, torch.device):
            object.__setattr__(self, "device", torch.device(self.device))


@dataclass(frozen=True)
class Backend:
    op: str
    name: str
    fn: Callable[..., Any]
    check: Callable[[KernelRequest], str | None]
    priority: int
    self_check: Callable[[torch.device], str | None] | None = None
    auto_refusal: Callable[[KernelRequest], str | None] | None = None


_backends: dict[str, dict[str, Backend]] = {}
_diagnostics: dict[str, Callable[..., Any]] = {}
_self_check_results: dict[tuple[str, str, str], str | None] = {}
_logged: set[tuple[str, ...]] = set()


def register(
    op: str,
    name: str,
    fn: Callable[..., Any],
    check: Callable[[KernelRequest], str | None],
    priority: int,
    self_check: Callable[[torch.device], str | None] | None = None,
    auto_refusal: Callable[[KernelRequest], str | None] | None = None,
) -> None:
    """Add (or replace) backend `name` of `op`."""
    if name not in BACKEND_CHOICES[1:]:
        raise ValueError(f"unknown backend name {name!r}; expected one of {BACKEND_CHOICES[1:]}")
    _backends.setdefault(op, {})[name] = Backend(op, name, fn, check, priority, self_check, auto_refusal)


OP_MODULES = ("aam.ops.attention", "aam.ops.pairwise_loss", "aam.ops.unifrac.dispatch", "aam.ops.dropout",
              "aam.ops.mlp")
_loaded = False


def load_ops() -> None:
    """Import every op module, which registers its backends (aam.ops itself loads them lazily)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in OP_MODULES:
            importlib.import_module(module)


def register_diagnostic(op: str, fn: Callable[..., Any]) -> None:
    """`fn(backend, device)` checks one backend of `op` for `aam kernels`: it returns None (pass), a string
    (the failure) or a dict with at least `ok` and `detail`."""
    _diagnostics[op] = fn


def diagnostic(op: str) -> Callable[..., Any] | None:
    """The diagnostic check of `op`, or None when it has none."""
    load_ops()
    return _diagnostics.get(op)


def auto_skips_triton_interpreter(req: KernelRequest) -> str | None:
    """`auto_refusal` of every Triton backend: on the CPU it runs only in the interpreter, which is for tests."""
    return "the triton interpreter is for tests only" if req.device.type == "cpu" else None


def backends(op: str) -> list[Backend]:
    """Backends of `op`, most preferred first."""
    load_ops()
    return sorted(_backends.get(op, {}).values(), key=lambda b: -b.priority)


def ops() -> list[str]:
    load_ops()
    return sorted(_backends)


def run_self_check(backend: Backend, device: torch.device) -> str | None:
    """Run (once per device type) and cache the backend's self-check; None means it passed."""
    if backend.self_check is None:
        return None
    key = (backend.op, backend.name, device.type)
    if key not in _self_check_results:
        try:
            _self_check_results[key] = backend.self_check(device)
        except Exception as exc:  # a crashing kernel is a failed self-check, not a crash of the run
            _self_check_results[key] = f"self-check raised {type(exc).__name__}: {exc}"
    return _self_check_results[key]


def _log_once(*key: str, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        log.info(message)


def resolve_name(op: str, requested: str) -> str:
    """Map a run-wide `--kernels` choice onto `op`: a backend the op does not have means `auto`.

    (`--kernels sdpa` picks SDPA attention; the UniFrac loss has no SDPA backend and uses `auto`.)
    """
    load_ops()
    if requested not in BACKEND_CHOICES:
        raise BackendUnavailable(f"unknown kernel backend {requested!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if requested != "auto" and requested not in _backends.get(op, {}):
        return "auto"
    return requested


def select(op: str, requested: str, req: KernelRequest) -> Backend:
    """The backend that runs `op` for request `req` (see the module docstring)."""
    load_ops()
    if op not in _backends:
        raise KeyError(f"no backends registered for op {op!r}")
    if requested != "auto":
        if requested not in _backends[op]:
            names = ", ".join(b.name for b in backends(op))
            raise BackendUnavailable(f"{op}: no backend {requested!r}; this op has: {names}")
        backend = _backends[op][requested]
        reason = backend.check(req) or run_self_check(backend, req.device)
        if reason:
            raise BackendUnavailable(f"{op}: backend {requested!r} cannot run here: {reason}")
        return backend
    refused = []
    for backend in backends(op):
        reason = backend.check(req) or run_self_check(backend, req.device) \
            or (backend.auto_refusal(req) if backend.auto_refusal else None)
        if reason is None:
            if refused:
                _log_once(
                    op, backend.name, str(req.device.type), str(req.dtype),
                    message=f"{op}: using {backend.name} ({'; '.join(refused)})",
                )
            return backend
        refused.append(f"{backend.name}: {reason}")
    raise BackendUnavailable(f"{op}: no backend can run this request: {'; '.join(refused)}")


def status(op: str, req: KernelRequest) -> list[tuple[str, str | None]]:
    """(backend name, None if available else the reason) for every backend of `op`, best first."""
    return [(b.name, b.check(req)) for b in backends(op)]


@torch.compiler.assume_constant_result
def _select_constant(op: str, requested: str, device_type: str, dtype: str | None, head_dim: int | None,
                     long_rows: bool, same_len: bool, dropout_p: float, padded: bool, batch: int | None,
                     dim: int | None) -> str:
    req = KernelRequest(torch.device(device_type), None if dtype is None else getattr(torch, dtype), head_dim,
                        long_rows, same_len, dropout_p, padded, batch, dim)
    return select(op, resolve_name(op, requested), req).name


def select_name(op: str, requested: str, req: KernelRequest) -> str:
    """The name of the backend that runs `req` (a run-wide choice is mapped with `resolve_name`).

    Safe under torch.compile: the request enters as plain constants and the choice is made once, at
    trace time, so a graph with dynamic sizes still traces without a break. The request must hold Python
    values, not symbolic sizes.
    """
    dtype = None if req.dtype is None else str(req.dtype).removeprefix("torch.")
    return _select_constant(op, requested, req.device.type, dtype, req.head_dim, req.long_rows, req.same_len,
                            float(req.dropout_p), req.padded, req.batch, req.dim)


def get(op: str, name: str) -> Backend:
    """Backend `name` of `op` (KeyError when absent)."""
    load_ops()
    return _backends[op][name]
