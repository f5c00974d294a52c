"""Backend registry: which implementation of each op runs, and why the others do not.

Every op (masked_attention, pairwise_unifrac_loss, unifrac) registers its backends here with
- `check(req) -> str | None`: None when the backend can run the request (a dict with at least
  `device` and `dtype`, plus op-specific keys such as `head_dim`), else the reason it cannot;
- `priority`: `auto` tries backends from the highest priority down;
- an optional `self_check(device) -> str | None`, run once per device type before `auto` trusts the
  backend (e.g. SDPA's memory-efficient path on ROCm); a failure is cached with its reason;
- an optional `auto_refusal(req) -> str | None`: a reason `auto` skips a backend that could run (an
  explicit choice still runs it), e.g. the Triton interpreter on the CPU, which is for tests only.

`select(op, "auto", req)` returns the first backend that can run and passed its self-check, and logs
each fallback once. `select(op, name, req)` with an explicit name raises BackendUnavailable with the
reason when that backend cannot run. `status(op, req)` lists every backend with its state for
`aam kernels`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from aam.errors import BackendUnavailable

log = logging.getLogger("aam.ops")

BACKEND_CHOICES = ("auto", "custom", "triton", "sdpa", "math")

Request = dict[str, Any]


@dataclass(frozen=True)
class Backend:
    op: str
    name: str
    fn: Callable[..., Any]
    check: Callable[[Request], str | None]
    priority: int
    self_check: Callable[[torch.device], str | None] | None = None
    auto_refusal: Callable[[Request], str | None] | None = None


_backends: dict[str, dict[str, Backend]] = {}
_self_check_results: dict[tuple[str, str, str], str | None] = {}
_logged: set[tuple[str, ...]] = set()


def register(
    op: str,
    name: str,
    fn: Callable[..., Any],
    check: Callable[[Request], str | None],
    priority: int,
    self_check: Callable[[torch.device], str | None] | None = None,
    auto_refusal: Callable[[Request], str | None] | None = None,
) -> None:
    """Add (or replace) backend `name` of `op`."""
    if name not in BACKEND_CHOICES[1:]:
        raise ValueError(f"unknown backend name {name!r}; expected one of {BACKEND_CHOICES[1:]}")
    _backends.setdefault(op, {})[name] = Backend(op, name, fn, check, priority, self_check, auto_refusal)


def auto_skips_triton_interpreter(req: Request) -> str | None:
    """`auto_refusal` of every Triton backend: on the CPU it runs only in the interpreter, which is for tests."""
    return "the triton interpreter is for tests only" if req["device"].type == "cpu" else None


def backends(op: str) -> list[Backend]:
    """Backends of `op`, most preferred first."""
    return sorted(_backends.get(op, {}).values(), key=lambda b: -b.priority)


def ops() -> list[str]:
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
    if requested not in BACKEND_CHOICES:
        raise BackendUnavailable(f"unknown kernel backend {requested!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if requested != "auto" and requested not in _backends.get(op, {}):
        return "auto"
    return requested


def select(op: str, requested: str, req: Request) -> Backend:
    """The backend that runs `op` for request `req` (see the module docstring)."""
    if op not in _backends:
        raise KeyError(f"no backends registered for op {op!r}")
    if requested != "auto":
        if requested not in _backends[op]:
            names = ", ".join(b.name for b in backends(op))
            raise BackendUnavailable(f"{op}: no backend {requested!r}; this op has: {names}")
        backend = _backends[op][requested]
        reason = backend.check(req) or run_self_check(backend, req["device"])
        if reason:
            raise BackendUnavailable(f"{op}: backend {requested!r} cannot run here: {reason}")
        return backend
    refused = []
    for backend in backends(op):
        reason = backend.check(req) or run_self_check(backend, req["device"]) \
            or (backend.auto_refusal(req) if backend.auto_refusal else None)
        if reason is None:
            if refused:
                _log_once(
                    op, backend.name, str(req["device"].type), str(req["dtype"]),
                    message=f"{op}: using {backend.name} ({'; '.join(refused)})",
                )
            return backend
        refused.append(f"{backend.name}: {reason}")
    raise BackendUnavailable(f"{op}: no backend can run this request: {'; '.join(refused)}")


def status(op: str, req: Request) -> list[tuple[str, str | None]]:
    """(backend name, None if available else the reason) for every backend of `op`, best first."""
    return [(b.name, b.check(req)) for b in backends(op)]
