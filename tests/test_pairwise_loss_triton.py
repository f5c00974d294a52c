"""Triton backend of the pairwise UniFrac loss on CPU, under TRITON_INTERPRET=1.

The interpreter must be switched on before triton is imported, so the checks run in one child
process (this file executed as a script with TRITON_INTERPRET=1); the rest of the suite never sees
the variable. Each pytest case reads its result from that run. Parity: DESIGN.md section 3.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from subprocess_env import child_env

CASES = [
    {"dtype": dtype, "b": b, "d": d, "transform": tr, "weighted": wt}
    for dtype in ("float32", "float16")
    for b, d in ((1, 8), (2, 5), (7, 40), (33, 17))
    for tr in ("identity", "tanh")
    for wt in (False, True)
]


def _case_id(c: dict) -> str:
    return f"{c['dtype']}-B{c['b']}-D{c['d']}-{c['transform']}-{'w' if c['weighted'] else 'nw'}"


def _run_case(c: dict) -> None:
    import torch

    import aam.ops
    from aam.ops.pairwise_loss import pairwise_loss_math
    from aam.ops.parity import assert_parity

    dtype = getattr(torch, c["dtype"])
    b, d = c["b"], c["d"]
    emb = (torch.randn(b, d, dtype=torch.float64) + 1.5).to(dtype)
    target = torch.rand(b, b, dtype=torch.float64) * 3.0
    w = None
    if c["weighted"]:
        w = torch.rand(b, b, dtype=torch.float64)
        w[torch.rand(b, b) < 0.3] = 0.0

    def run(fn, e, t, ww):
        x = e.detach().clone().requires_grad_(True)
        loss = fn(x, t, c["transform"], 4.0, ww)
        (g,) = torch.autograd.grad(loss, x)
        return loss.detach(), g

    ref = run(pairwise_loss_math, emb.double(), target, w)
    lp = run(pairwise_loss_math, emb, target.to(dtype), None if w is None else w.to(dtype))
    got = run(lambda *a: aam.ops.pairwise_unifrac_loss(*a, backend="triton"), emb, target.float(),
              None if w is None else w.float())
    assert got[0].dtype == dtype and got[1].dtype == dtype
    assert_parity(ref[0], lp[0], got[0], "forward", dtype)
    assert_parity(ref[1], lp[1], got[1], "backward", dtype)
    if b == 1:
        assert float(got[0]) == 0.0 and bool((got[1] == 0).all())


def _run_extra() -> dict[str, str]:
    """Duplicate embeddings, opcheck of the Triton custom op; returns name -> '' or the failure."""
    import torch

    import aam.ops
    from aam.ops.pairwise_loss import triton_fwd_op

    out = {}
    try:
        e = torch.randn(6, 16)
        e[4] = e[1]
        x = e.clone().requires_grad_(True)
        aam.ops.pairwise_unifrac_loss(x, torch.rand(6, 6), backend="triton").backward()
        assert torch.isfinite(x.grad).all()
        same = torch.ones(4, 16).mul(2.0).requires_grad_(True)
        aam.ops.pairwise_unifrac_loss(same, torch.rand(4, 4), backend="triton").backward()
        assert bool((same.grad == 0).all()), same.grad
        out["duplicates"] = ""
    except Exception as exc:  # reported to the parent test
        out["duplicates"] = f"{type(exc).__name__}: {exc}"
    try:
        e = torch.randn(9, 12, requires_grad=True)
        torch.library.opcheck(triton_fwd_op, (e, torch.rand(9, 9), None, True, 3.0))
        out["opcheck"] = ""
    except Exception as exc:
        out["opcheck"] = f"{type(exc).__name__}: {exc}"
    return out


def _child() -> None:
    import torch

    results = {}
    for c in CASES:
        torch.manual_seed(hash(_case_id(c)) % 2**31)
        try:
            _run_case(c)
            results[_case_id(c)] = ""
        except Exception as exc:
            results[_case_id(c)] = f"{type(exc).__name__}: {exc}"
    results.update(_run_extra())
    print("RESULTS " + json.dumps(results))


@pytest.fixture(scope="module")
def interpreter_results() -> dict[str, str]:
    pytest.importorskip("triton", reason="triton not installed")
    env = child_env(TRITON_INTERPRET="1", PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"Triton interpreter run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.triton
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_triton_interpret_parity(interpreter_results, case):
    assert interpreter_results[_case_id(case)] == ""


@pytest.mark.triton
@pytest.mark.parametrize("check", ["duplicates", "opcheck"])
def test_triton_interpret_extra(interpreter_results, check):
    assert interpreter_results[check] == ""


if __name__ == "__main__":
    _child()
