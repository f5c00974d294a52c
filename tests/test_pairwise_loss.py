"""Pairwise UniFrac loss: math reference, CPU custom op (C++), dispatch, debug checks.

Parity follows DESIGN.md section 3 (aam.ops.parity): the float64 math result is the reference; a
backend's error may be at most 2x (forward) / 3x (backward) that of math in the same precision.
The Triton backend is tested in tests/test_pairwise_loss_triton.py (TRITON_INTERPRET=1 subprocess).
"""

from __future__ import annotations

import math

import pytest
import torch

import aam.ops
from aam import native
from aam.errors import BackendUnavailable, InputError
from aam.ops import registry
from aam.ops.pairwise_loss import OP, custom_bwd_op, custom_fwd_op, pairwise_loss_math
from aam.ops.parity import assert_parity
from aam.ops.registry import KernelRequest

needs_cpu = pytest.mark.native("pairwise_loss_forward")


def _inputs(b: int, d: int, dtype=torch.float64, weights: bool = False, offset: float = 0.0):
    emb = torch.randn(b, d, dtype=torch.float64) + offset
    target = torch.rand(b, b, dtype=torch.float64) * 2.0
    target = (target + target.T) / 2
    w = None
    if weights:
        w = torch.rand(b, b, dtype=torch.float64)
        w[torch.rand(b, b) < 0.3] = 0.0
    return emb.to(dtype), target, w


def _loss_and_grad(fn, emb, target, transform, scale, weights):
    e = emb.detach().clone().requires_grad_(True)
    loss = fn(e, target, transform, scale, weights)
    (grad,) = torch.autograd.grad(loss, e)
    return loss.detach(), grad


def _brute(emb, target, transform, scale, weights):
    """Direct loop over pairs in float64: independent of the Gram-matrix form of `math`."""
    b = emb.shape[0]
    num = den = 0.0
    for i in range(b):
        for j in range(i + 1, b):
            w = 1.0 if weights is None else float(weights[i, j])
            if w == 0.0:
                continue
            d = float(torch.linalg.vector_norm(emb[i].double() - emb[j].double()))
            pred = math.tanh(d / scale) if transform == "tanh" else d
            num += w * (pred - float(target[i, j])) ** 2
            den += w
    return num / den if den > 0 else 0.0


# ---- math reference ------------------------------------------------------------------------------

@pytest.mark.parametrize("transform", ["identity", "tanh"])
@pytest.mark.parametrize("weighted", [False, True])
def test_math_matches_brute_force(transform, weighted):
    emb, target, w = _inputs(9, 5, weights=weighted)
    got = pairwise_loss_math(emb, target, transform, 2.0, w)
    assert float(got) == pytest.approx(_brute(emb, target, transform, 2.0, w), rel=1e-12)


def test_math_gradcheck_float64():
    emb, target, w = _inputs(6, 4, weights=True)
    e = emb.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: pairwise_loss_math(x, target, "tanh", 2.0, w), (e,))


# ---- CPU custom op ---------------------------------------------------------------------------------

@needs_cpu
@pytest.mark.parametrize("transform", ["identity", "tanh"])
@pytest.mark.parametrize("weighted", [False, True])
def test_custom_gradcheck_float64(transform, weighted):
    emb, target, w = _inputs(7, 5, weights=weighted)
    e = emb.clone().requires_grad_(True)

    def f(x):
        return aam.ops.pairwise_unifrac_loss(x, target, transform, 2.0, w, backend="custom")

    assert torch.autograd.gradcheck(f, (e,))


@needs_cpu
@pytest.mark.parametrize("weighted", [False, True])
def test_opcheck_custom_ops(weighted):
    emb, target, w = _inputs(9, 6, dtype=torch.float32, weights=weighted)
    target = target.float()
    w = None if w is None else w.float()
    e = emb.clone().requires_grad_(True)
    torch.library.opcheck(custom_fwd_op, (e, target, w, True, 3.0))
    torch.library.opcheck(custom_fwd_op, (emb, target, w, False, 10.0))
    _, coef, denom = custom_fwd_op(emb, target, w, False, 10.0)
    torch.library.opcheck(custom_bwd_op, (torch.tensor(1.5), emb, target, w, coef, denom, False, 10.0))


@needs_cpu
@pytest.mark.parametrize("b", [1, 2, 3, 7, 33, 130])
@pytest.mark.parametrize("d", [1, 8, 37])
@pytest.mark.parametrize("transform", ["identity", "tanh"])
@pytest.mark.parametrize("weighted", [False, True])
def test_custom_fp32_parity(b, d, transform, weighted):
    emb64, target, w = _inputs(b, d, weights=weighted, offset=3.0)
    ref_l, ref_g = _loss_and_grad(pairwise_loss_math, emb64, target, transform, 4.0, w)
    lp_l, lp_g = _loss_and_grad(pairwise_loss_math, emb64.float(), target.float(), transform, 4.0,
                                None if w is None else w.float())

    def custom(e, t, tr, s, ww):
        return aam.ops.pairwise_unifrac_loss(e, t, tr, s, ww, backend="custom")

    got_l, got_g = _loss_and_grad(custom, emb64.float(), target.float(), transform, 4.0,
                                  None if w is None else w.float())
    assert got_l.dtype == torch.float32 and got_g.dtype == torch.float32
    assert_parity(ref_l, lp_l, got_l, "forward", torch.float32)
    assert_parity(ref_g, lp_g, got_g, "backward", torch.float32)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_custom_half_inputs_are_upcast(dtype):
    emb64, target, _ = _inputs(17, 12)
    emb = emb64.to(dtype)
    ref_l, ref_g = _loss_and_grad(pairwise_loss_math, emb.double(), target, "identity", 10.0, None)
    lp_l, lp_g = _loss_and_grad(pairwise_loss_math, emb, target.to(dtype), "identity", 10.0, None)
    got_l, got_g = _loss_and_grad(
        lambda *a: aam.ops.pairwise_unifrac_loss(*a, backend="custom"), emb, target, "identity", 10.0, None)
    assert got_l.dtype == dtype and got_g.dtype == dtype
    assert_parity(ref_l, lp_l, got_l, "forward", dtype)
    assert_parity(ref_g, lp_g, got_g, "backward", dtype)


@needs_cpu
def test_custom_float64_matches_brute_force():
    emb, target, w = _inputs(11, 7, weights=True, offset=100.0)  # far from the origin: no cancellation
    got = aam.ops.pairwise_unifrac_loss(emb, target, "tanh", 50.0, w, backend="custom")
    assert float(got) == pytest.approx(_brute(emb, target, "tanh", 50.0, w), rel=1e-12)


@needs_cpu
@pytest.mark.parametrize("backend", ["math", "custom"])
def test_single_sample_gives_zero_loss_and_grad(backend):
    e = torch.randn(1, 8, requires_grad=True)
    loss = aam.ops.pairwise_unifrac_loss(e, torch.zeros(1, 1), backend=backend)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.equal(e.grad, torch.zeros_like(e))


@needs_cpu
@pytest.mark.parametrize("backend", ["math", "custom"])
def test_duplicate_embeddings_have_finite_defined_gradient(backend):
    emb, target, _ = _inputs(6, 5)
    emb[3] = emb[1]
    emb[5] = emb[1]
    ref_l, ref_g = _loss_and_grad(_brute_torch, emb, target, "identity", 10.0, None)
    got_l, got_g = _loss_and_grad(
        lambda *a: aam.ops.pairwise_unifrac_loss(*a, backend=backend), emb, target, "identity", 10.0, None)
    assert torch.isfinite(got_g).all()
    assert float(got_l) == pytest.approx(float(ref_l), rel=1e-12)
    torch.testing.assert_close(got_g, ref_g, rtol=1e-7, atol=1e-7)


def _brute_torch(emb, target, transform, scale, weights):
    """Pair loop in torch whose gradient at d = 0 is 0 by construction (the defined gradient)."""
    b = emb.shape[0]
    terms = []
    for i in range(b):
        for j in range(i + 1, b):
            diff = emb[i] - emb[j]
            d2 = (diff * diff).sum()
            d = torch.sqrt(d2) if float(d2.detach()) > 0 else d2 * 0.0
            terms.append((d - target[i, j]) ** 2)
    return torch.stack(terms).mean()


@needs_cpu
def test_all_identical_embeddings_give_zero_gradient():
    e = torch.ones(5, 4).mul(3.0).requires_grad_(True)
    loss = aam.ops.pairwise_unifrac_loss(e, torch.rand(5, 5), backend="custom")
    loss.backward()
    assert torch.equal(e.grad, torch.zeros_like(e))


@needs_cpu
def test_zero_weight_pairs_ignore_their_targets():
    emb, target, w = _inputs(8, 4, weights=True)
    target[w == 0] = float("nan")  # pairs without a target
    for backend in ("math", "custom"):
        got_l, got_g = _loss_and_grad(
            lambda *a, bk=backend: aam.ops.pairwise_unifrac_loss(*a, backend=bk), emb, target, "identity",
            10.0, w)
        assert torch.isfinite(got_l) and torch.isfinite(got_g).all()
        assert float(got_l) == pytest.approx(_brute(emb, target, "identity", 10.0, w), rel=1e-12)


@needs_cpu
def test_all_weights_zero_gives_zero():
    emb, target, _ = _inputs(5, 3)
    e = emb.clone().requires_grad_(True)
    loss = aam.ops.pairwise_unifrac_loss(e, target, weights=torch.zeros(5, 5, dtype=torch.float64),
                                         backend="custom")
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(e.grad, torch.zeros_like(e))


@needs_cpu
def test_auto_prefers_custom_on_cpu():
    req = KernelRequest("cpu", torch.float32, batch=8, dim=4)
    assert registry.select(OP, "auto", req).name == "custom"


@needs_cpu
def test_auto_never_picks_the_triton_interpreter(monkeypatch):
    """Even where the interpreter could run it, `auto` leaves Triton to GPUs; an explicit choice runs it."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    req = KernelRequest("cpu", torch.float32, batch=8, dim=4)
    assert registry.select(OP, "auto", req).name == "custom"
    assert registry.select(OP, "triton", req).name == "triton"
    gpu = KernelRequest("cuda", torch.bfloat16, batch=8, dim=4)
    assert registry.select(OP, "auto", gpu).name == "triton"  # Gram tiles on tl.dot beat scalar CUDA FMAs


@needs_cpu
def test_custom_under_torch_compile():
    emb, target, _ = _inputs(10, 6, dtype=torch.float32)
    target = target.float()

    def f(e):
        return aam.ops.pairwise_unifrac_loss(e, target, "tanh", 3.0, backend="custom") * 2.0

    e1 = emb.clone().requires_grad_(True)
    e2 = emb.clone().requires_grad_(True)
    f(e1).backward()
    torch.compile(f, backend="aot_eager", fullgraph=True)(e2).backward()
    torch.testing.assert_close(e1.grad, e2.grad)


# ---- dispatch and errors -----------------------------------------------------------------------------

def test_custom_unavailable_raises_with_reason(monkeypatch):
    monkeypatch.setattr(native, "cpu_module", lambda: None)
    monkeypatch.setitem(native._errors, "_C", "aam._C not importable (test)")
    with pytest.raises(BackendUnavailable, match="custom.*aam._C not importable"):
        aam.ops.pairwise_unifrac_loss(torch.randn(3, 2), torch.rand(3, 3), backend="custom")
    # auto falls back to math quietly
    assert torch.isfinite(aam.ops.pairwise_unifrac_loss(torch.randn(3, 2), torch.rand(3, 3)))


def test_custom_unsupported_dtype_reason():
    req = KernelRequest("cpu", torch.int32, batch=3, dim=2)
    reason = dict(registry.status(OP, req))["custom"]
    assert reason and "dtype" in reason


def test_triton_refused_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET"):
        aam.ops.pairwise_unifrac_loss(torch.randn(3, 2), torch.rand(3, 3), backend="triton")


def test_bad_shapes_raise_input_error():
    with pytest.raises(InputError, match="target must be"):
        aam.ops.pairwise_unifrac_loss(torch.randn(3, 2), torch.rand(3, 4))
    with pytest.raises(InputError, match="emb must be"):
        aam.ops.pairwise_unifrac_loss(torch.randn(3), torch.rand(3, 3))
    with pytest.raises(InputError, match="weights must be"):
        aam.ops.pairwise_unifrac_loss(torch.randn(3, 2), torch.rand(3, 3), weights=torch.ones(2, 2))
    with pytest.raises(ValueError, match="transform"):
        aam.ops.pairwise_unifrac_loss(torch.randn(3, 2), torch.rand(3, 3), transform="log")


@pytest.mark.parametrize("backend", ["math", pytest.param("custom", marks=needs_cpu)])
def test_nan_raises_only_in_debug_mode(monkeypatch, backend):
    emb = torch.randn(4, 3)
    emb[2, 1] = float("nan")
    target = torch.rand(4, 4)
    monkeypatch.delenv("AAM_DEBUG_CHECKS", raising=False)
    assert torch.isnan(aam.ops.pairwise_unifrac_loss(emb, target, backend=backend))
    monkeypatch.setenv("AAM_DEBUG_CHECKS", "1")
    with pytest.raises(InputError, match="emb has a non-finite value at row 2, column 1"):
        aam.ops.pairwise_unifrac_loss(emb, target, backend=backend)
    bad_target = torch.rand(4, 4)
    bad_target[0, 3] = float("inf")
    with pytest.raises(InputError, match=r"target has a non-finite value for pair \(0, 3\)"):
        aam.ops.pairwise_unifrac_loss(torch.randn(4, 3), bad_target, backend=backend)
    # a NaN target of a pair with weight 0 is not an error
    w = torch.ones(4, 4)
    w[0, 3] = 0.0
    assert torch.isfinite(aam.ops.pairwise_unifrac_loss(torch.randn(4, 3), bad_target, weights=w,
                                                        backend=backend))
