"""The kernel parity rule of DESIGN.md section 3: the one definition that tests and self-checks use.

The float64 `math` result is the reference. A backend passes when its max-abs error against the
reference is at most 2x (forward) or 3x (backward) the max-abs error of `math` run in the same low
precision, with absolute floors, so that a `math` result that happens to be exact does not demand an
exact kernel:

| dtype    | forward floor | backward floor | |
|----------|---------------|----------------|---|
| float64  | 1e-10         | 1e-9           | absolute |
| float32  | 1e-5          | 1e-4           | absolute (DESIGN.md) |
| float16  | 1e-3          | 1e-2           | x max(1, max abs reference): about 1 ulp forward, 10 backward |
| bfloat16 | 1e-2          | 5e-2           | x max(1, max abs reference): about 1 ulp forward, 6 backward |

A NaN or inf where the reference is finite is an infinite error. Self-checks (`aam kernels`) apply the
same rule on their small random cases; none needs a coarser tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

FACTOR = {"forward": 2.0, "backward": 3.0}
FLOOR = {
    torch.float64: {"forward": 1e-10, "backward": 1e-9},
    torch.float32: {"forward": 1e-5, "backward": 1e-4},
    torch.float16: {"forward": 1e-3, "backward": 1e-2},
    torch.bfloat16: {"forward": 1e-2, "backward": 5e-2},
}
RELATIVE_FLOOR = (torch.float16, torch.bfloat16)  # floors scaled by max(1, max |reference|)


def max_abs_error(ref64: torch.Tensor, x: torch.Tensor) -> float:
    """max |x - ref64| in float64 (0.0 for empty tensors); NaN/inf where the reference is finite -> inf."""
    ref = ref64.detach().to(torch.float64).cpu()
    val = x.detach().to(torch.float64).cpu()
    if ref.shape != val.shape:
        raise AssertionError(f"shape mismatch: reference {tuple(ref.shape)}, got {tuple(val.shape)}")
    if ref.numel() == 0:
        return 0.0
    diff = (val - ref).abs()
    diff = torch.where(torch.isfinite(ref) & ~torch.isfinite(val), torch.full_like(diff, float("inf")), diff)
    diff = torch.where(~torch.isfinite(ref) & (val == ref), torch.zeros_like(diff), diff)
    return float(diff.max())


def floor_for(ref64: torch.Tensor, kind: str, dtype: torch.dtype) -> float:
    """The absolute error floor of the rule for `dtype` and `kind` (see the table above)."""
    if kind not in FACTOR:
        raise ValueError(f"kind must be 'forward' or 'backward', got {kind!r}")
    floor = FLOOR[dtype][kind]
    if dtype in RELATIVE_FLOOR and ref64.numel():
        floor *= max(1.0, float(ref64.detach().abs().max()))
    return floor


@dataclass(frozen=True)
class Check:
    """One tensor checked against the rule."""

    what: str
    kind: str
    dtype: torch.dtype
    err: float       # backend error vs the float64 reference
    err_math: float  # math in `dtype` vs the float64 reference
    bound: float     # max(FACTOR * err_math, floor)
    nan: bool        # NaN in the backend's result

    @property
    def ok(self) -> bool:
        return not self.nan and self.err <= self.bound

    def message(self) -> str:
        label = f"{self.what} " if self.what else ""
        return (f"{label}{self.kind} parity {'ok' if self.ok else 'failed'} in {self.dtype}: backend error "
                f"{self.err:.3e} {'<=' if self.ok else '>'} bound {self.bound:.3e} (math error {self.err_math:.3e}, "
                f"factor {FACTOR[self.kind]})" + (", NaN in the result" if self.nan else ""))


def check(ref64: torch.Tensor, math_lp: torch.Tensor, got: torch.Tensor, kind: str = "forward",
          dtype: torch.dtype = torch.float32, what: str = "") -> Check:
    """Apply the rule to one tensor. ref64: float64 math; math_lp: math in `dtype`; got: the backend (any dtype)."""
    err_math = max_abs_error(ref64, math_lp)
    bound = max(FACTOR[kind] * err_math, floor_for(ref64, kind, dtype))
    return Check(what, kind, dtype, max_abs_error(ref64, got), err_math, bound, bool(torch.isnan(got).any()))


def assert_parity(ref64: torch.Tensor, math_lp: torch.Tensor, got: torch.Tensor, kind: str = "forward",
                  dtype: torch.dtype = torch.float32, what: str = "") -> dict[str, float]:
    """Assert the rule for one tensor; returns the errors and the bound (handy for logging)."""
    res = check(ref64, math_lp, got, kind, dtype, what)
    assert res.ok, res.message()
    return {"err_backend": res.err, "err_math": res.err_math, "bound": res.bound}


@dataclass(frozen=True)
class Report:
    """An output and its gradients checked against the rule (forward for the output, backward for each gradient)."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def nan(self) -> bool:
        return any(c.nan for c in self.checks)

    def worst(self, kind: str) -> Check:
        """The check of `kind` closest to (or furthest past) its bound."""
        return max((c for c in self.checks if c.kind == kind), key=lambda c: c.err / c.bound)

    def failures(self) -> list[str]:
        return [c.message() for c in self.checks if not c.ok]

    def assert_ok(self) -> None:
        assert self.ok, "; ".join(self.failures())


Result = tuple[torch.Tensor, Sequence[torch.Tensor]]  # (output, gradients)


def check_fwd_bwd(ref: Result, low: Result, got: Result, dtype: torch.dtype, names: Sequence[str] | None = None,
                  what: str = "") -> Report:
    """The rule for (output, gradients) of float64 math (`ref`), math in `dtype` (`low`) and the backend (`got`).

    names: one label per gradient (default d0, d1, ...)."""
    (ref_out, ref_grads), (low_out, low_grads), (out, grads) = ref, low, got
    names = list(names) if names is not None else [f"d{i}" for i in range(len(grads))]
    label = f"{what} " if what else ""
    checks = [check(ref_out, low_out, out, "forward", dtype, f"{label}output".strip())]
    for name, r, lo, g in zip(names, ref_grads, low_grads, grads, strict=True):
        checks.append(check(r, lo, g, "backward", dtype, f"{label}{name}"))
    return Report(tuple(checks))
