"""The kernel parity rule of DESIGN.md section 3, as one assertion shared by the op tests.

The float64 `math` result is the reference. A backend passes when its max-abs error against the
reference is at most 2x (forward) or 3x (backward) the max-abs error of `math` run in the same low
precision, with absolute floors so that an exact low-precision `math` result does not demand an exact
kernel: 1e-5 (fp32 forward) and 1e-4 (fp32 backward) as DESIGN.md fixes them; for fp16/bf16 one unit in
the last place at the reference's magnitude; for fp64 1e-10 / 1e-9.
"""

from __future__ import annotations

import torch

FACTOR = {"forward": 2.0, "backward": 3.0}
FLOOR = {
    torch.float32: {"forward": 1e-5, "backward": 1e-4},
    torch.float64: {"forward": 1e-10, "backward": 1e-9},
}


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
    """The absolute error floor of the rule for `dtype` and `kind`."""
    if dtype in FLOOR:
        return FLOOR[dtype][kind]
    scale = float(ref64.detach().abs().max()) if ref64.numel() else 0.0
    return torch.finfo(dtype).eps * max(1.0, scale)


def assert_parity(
    ref64: torch.Tensor,
    math_lp: torch.Tensor,
    got: torch.Tensor,
    kind: str = "forward",
    dtype: torch.dtype = torch.float32,
    what: str = "",
) -> dict[str, float]:
    """Assert the parity rule; returns the errors and the bound (handy for logging).

    ref64: float64 math result; math_lp: math in `dtype`; got: the backend's result (any dtype).
    """
    if kind not in FACTOR:
        raise ValueError(f"kind must be 'forward' or 'backward', got {kind!r}")
    err_math = max_abs_error(ref64, math_lp)
    err_got = max_abs_error(ref64, got)
    bound = max(FACTOR[kind] * err_math, floor_for(ref64, kind, dtype))
    label = f"{what} " if what else ""
    assert err_got <= bound, (
        f"{label}{kind} parity failed in {dtype}: backend error {err_got:.3e} > bound {bound:.3e} "
        f"(math {dtype} error {err_math:.3e}, factor {FACTOR[kind]}, floor {floor_for(ref64, kind, dtype):.1e})"
    )
    return {"err_backend": err_got, "err_math": err_math, "bound": bound}
