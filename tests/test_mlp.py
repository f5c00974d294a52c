"""aam.ops.mlp: the row-blocked feed-forward network against float64 math (DESIGN.md's parity rule) at block
boundaries, in float64 and under bf16 autocast, with frozen parts, without autograd, and inside the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aam.models.transformer import Block, Transformer
from aam.ops import parity, registry
from aam.ops.mlp import OP, _math, block_rows, gelu_mlp
from aam.ops.registry import KernelRequest

D, HIDDEN = 24, 96
BLOCK = block_rows(HIDDEN)


def _layers(seed: int = 0) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(seed)
    return nn.Linear(D, HIDDEN).double(), nn.Linear(HIDDEN, D).double()


def _run(fn, x64, layers, dtype, grads=("x", "fc.weight", "fc.bias", "fc_out.weight", "fc_out.bias"),
         autocast: torch.dtype | None = None):
    fc, out = (nn.Linear(m.in_features, m.out_features) for m in layers)
    fc.load_state_dict(layers[0].state_dict())
    out.load_state_dict(layers[1].state_dict())
    param_dtype = torch.float32 if autocast else dtype
    fc, out = fc.to(param_dtype), out.to(param_dtype)
    x = x64.to(param_dtype).requires_grad_("x" in grads)
    named = {"x": x, "fc.weight": fc.weight, "fc.bias": fc.bias, "fc_out.weight": out.weight,
             "fc_out.bias": out.bias}
    for name, t in named.items():
        t.requires_grad_(name in grads)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        y = fn(x, fc, out)
    g = torch.Generator().manual_seed(9)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    got = torch.autograd.grad(y, [named[n] for n in grads], dy)
    return y.detach(), [t.detach() for t in got]


def _custom(x, fc, out):
    return gelu_mlp(x, fc, out, "custom")


def _report(x64, layers, dtype, autocast=None, grads=("x", "fc.weight", "fc.bias", "fc_out.weight", "fc_out.bias")):
    ref = _run(_math, x64, layers, torch.float64, grads)
    low = _run(_math, x64, layers, dtype, grads, autocast)
    got = _run(_custom, x64, layers, dtype, grads, autocast)
    return parity.check_fwd_bwd(ref, low, got, autocast or dtype, names=grads)


@pytest.mark.parametrize("rows", [1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_at_block_boundaries(rows, dtype):
    x = torch.randn(rows, D, dtype=torch.float64, generator=torch.Generator().manual_seed(rows))
    _report(x, _layers(), dtype).assert_ok()


def test_parity_under_bf16_autocast_returns_bf16_and_float32_gradients():
    x = torch.randn(2 * BLOCK + 5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layers = _layers(1)
    _report(x, layers, torch.float32, autocast=torch.bfloat16).assert_ok()
    y, grads = _run(_custom, x, layers, torch.float32, autocast=torch.bfloat16)
    assert y.dtype == torch.bfloat16
    assert [g.dtype for g in grads] == [torch.float32] * 5  # cast back like F.linear's under autocast


def test_leading_dims_and_partial_gradients():
    x = torch.randn(3, BLOCK // 2 + 3, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    layers = _layers(2)
    _report(x, layers, torch.float32).assert_ok()
    _report(x, layers, torch.float32, grads=("x",)).assert_ok()  # a frozen MLP inside a trained model
    _report(x, layers, torch.float32, grads=("fc.weight", "fc_out.bias")).assert_ok()  # its input is a leaf


def test_without_autograd_matches_math_and_saves_nothing():
    fc, out = (m.float() for m in _layers(3))
    x = torch.randn(2 * BLOCK + 1, D)
    with torch.no_grad():
        got = gelu_mlp(x, fc, out, "custom")
        want = _math(x, fc, out)
    assert got.grad_fn is None
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_empty_input():
    fc, out = (m.float() for m in _layers(4))
    x = torch.zeros(0, D, requires_grad=True)
    y = gelu_mlp(x, fc, out, "custom")
    assert y.shape == (0, D)
    y.sum().backward()
    assert torch.equal(fc.weight.grad, torch.zeros_like(fc.weight))


def test_auto_picks_the_blocked_mlp_on_cpu_only():
    assert registry.select_name(OP, "auto", KernelRequest(torch.device("cpu"), torch.float32)) == "custom"
    assert registry.select_name(OP, "auto", KernelRequest(torch.device("cpu"), torch.bfloat16)) == "custom"
    assert registry.select_name(OP, "auto", KernelRequest(torch.device("cuda"), torch.float32)) == "math"
    assert registry.select_name(OP, "auto", KernelRequest(torch.device("cpu"), torch.float16)) == "math"
    assert registry.select_name(OP, registry.resolve_name(OP, "math"),
                                KernelRequest(torch.device("cpu"), torch.float32)) == "math"


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_block_equals_the_math_block(dropout):
    """A Block with the blocked MLP (dropout 0, or eval) computes what the --kernels math Block computes; with
    dropout in training it runs the three ops one by one (the same random stream as math's)."""
    torch.manual_seed(5)
    fast = Block(D, 4, 4, dropout, 0.0, "auto")
    slow = Block(D, 4, 4, dropout, 0.0, "math")
    slow.load_state_dict(fast.state_dict())
    slow.dropout_backend = fast.dropout_backend = "math"  # the same dropout stream on both sides
    x = torch.randn(2, 11, D)
    for training in (True, False):
        fast.train(training)
        slow.train(training)
        torch.manual_seed(6)
        a = fast(x, None)
        torch.manual_seed(6)
        b = slow(x, None)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(7)
    plain = Transformer(D, 4, 2, dropout=0.0)
    ckpt = Transformer(D, 4, 2, dropout=0.0, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(3, 9, D)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[0, 5:] = True
    for m in (plain, ckpt):
        m(x, pad).square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
