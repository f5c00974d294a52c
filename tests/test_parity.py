"""aam.ops.parity, DESIGN.md's parity rule as tests and self-checks apply it."""

from __future__ import annotations

import pytest
import torch

from aam.ops import parity


def test_bound_is_factor_times_math_error_or_the_floor():
    ref = torch.zeros(4, dtype=torch.float64)
    math_lp = torch.tensor([0.0, 1e-3, 0.0, 0.0])
    assert parity.check(ref, math_lp, torch.full((4,), 2e-3), "forward").ok  # 2 x math's error
    assert not parity.check(ref, math_lp, torch.full((4,), 2.1e-3), "forward").ok
    assert parity.check(ref, math_lp, torch.full((4,), 3e-3), "backward").ok  # 3 x
    exact = torch.zeros(4)  # math exact: the fp32 floors of DESIGN.md
    assert parity.check(ref, exact, torch.full((4,), 1e-5), "forward").ok
    assert not parity.check(ref, exact, torch.full((4,), 2e-5), "forward").ok
    assert parity.check(ref, exact, torch.full((4,), 1e-4), "backward").ok


@pytest.mark.parametrize("dtype,fwd,bwd", [(torch.float16, 1e-3, 1e-2), (torch.bfloat16, 1e-2, 5e-2)])
def test_half_floors_scale_with_the_reference(dtype, fwd, bwd):
    small, large = torch.full((3,), 0.5, dtype=torch.float64), torch.full((3,), 40.0, dtype=torch.float64)
    assert parity.floor_for(small, "forward", dtype) == fwd
    assert parity.floor_for(small, "backward", dtype) == bwd
    assert parity.floor_for(large, "forward", dtype) == pytest.approx(40 * fwd)
    assert parity.floor_for(large, "forward", torch.float32) == 1e-5  # fp32 floors are absolute


def test_nan_and_inf_fail_and_shapes_must_match():
    ref = torch.ones(3, dtype=torch.float64)
    got = torch.tensor([1.0, float("nan"), 1.0])
    res = parity.check(ref, ref.float(), got)
    assert not res.ok and res.nan and res.err == float("inf")
    assert not parity.check(ref, ref.float(), torch.tensor([1.0, float("inf"), 1.0])).ok
    with pytest.raises(AssertionError, match="shape mismatch"):
        parity.max_abs_error(ref, torch.ones(4))
    with pytest.raises(AssertionError, match="forward parity failed"):
        parity.assert_parity(ref, ref.float(), ref.float() + 1.0)


def test_report_over_output_and_gradients():
    ref = (torch.zeros(2, dtype=torch.float64), [torch.zeros(2, dtype=torch.float64)] * 2)
    low = (torch.zeros(2), [torch.zeros(2)] * 2)
    good = parity.check_fwd_bwd(ref, low, (torch.zeros(2), [torch.zeros(2), torch.full((2,), 1e-4)]),
                                torch.float32, names=("da", "db"))
    assert good.ok and good.worst("backward").what == "db"
    bad = parity.check_fwd_bwd(ref, low, (torch.zeros(2), [torch.full((2,), 1.0), torch.zeros(2)]),
                               torch.float32, names=("da", "db"), what="x")
    assert not bad.ok and len(bad.failures()) == 1 and "x da backward parity failed" in bad.failures()[0]
    with pytest.raises(AssertionError, match="x da"):
        bad.assert_ok()
