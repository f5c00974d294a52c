"""aam.ops.mlp: the row-blocked feed-forward network against float64 math (DESIGN.md's parity rule) at block
boundaries, in float64 and under bf16 autocast, with dropout (the CPU kernel's mask, drawn per block), with frozen
parts, without autograd, and inside the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aam import native
from aam.models.transformer import Block, Transformer
from aam.ops import mlp, parity, registry
from aam.ops.dropout import _dropout_cpu
from aam.ops.mlp import OP, _math, block_rows, gelu_mlp
from aam.ops.registry import KernelRequest

D, HIDDEN = 24, 96
BLOCK = block_rows(HIDDEN)


DEFAULT_MIN_BLOCKED = mlp.MIN_BLOCKED_ELEMENTS


@pytest.fixture(autouse=True)
def blocks_at_every_size(monkeypatch):
    """The row blocks run at these small sizes too (by default only from MIN_BLOCKED_ELEMENTS up)."""
    monkeypatch.setattr(mlp, "MIN_BLOCKED_ELEMENTS", 0)


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


def _unfused_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """Block.forward as it was before the row-blocked MLP: fc, GELU, aam dropout, fc_out one by one."""
    h = x + block.drop(block.attn(block.ln1(x), None, None))
    return h + block.drop(block.fc_out(block.drop(F.gelu(block.fc(block.ln2(h))))))


@pytest.mark.native("dropout")
def test_block_with_dropout_draws_the_unfused_blocks_masks():
    """In training with dropout, the blocked MLP's mask is the mask aam.ops.dropout draws on the whole [T, hidden]
    tensor with the same generator state (per block, at the block's offset): the Block computes what the three ops
    one by one compute, over two row blocks, output and gradients."""
    torch.manual_seed(5)
    block = Block(D, 4, 4, 0.3, 0.0, "auto").train()
    x = torch.randn(3, (BLOCK + 40) // 3 + 1, D)
    results = []
    for fn in (lambda t: block(t, None), lambda t: _unfused_block(block, t)):
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(6)
        y = fn(xi)
        y.square().sum().backward()
        results.append((y.detach(), xi.grad, [p.grad.clone() for p in block.parameters()]))
        block.zero_grad(set_to_none=True)
    (y0, gx0, gp0), (y1, gx1, gp1) = results
    assert (y0 - y1).abs().max() < 1e-4  # a different mask would differ by O(1)
    torch.testing.assert_close(gx0, gx1, rtol=1e-4, atol=1e-4)
    for a, b in zip(gp0, gp1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.native("dropout")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_with_dropout(dtype):
    """With dropout: the blocked MLP against float64 math under the same mask (the CPU dropout kernel's, drawn from
    the same generator state), across block boundaries."""
    p, rows = 0.2, 3 * BLOCK + 17
    x64 = torch.randn(rows, D, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    layers = _layers(11)
    torch.manual_seed(12)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    mask = _dropout_cpu(torch.ones(rows * HIDDEN, dtype=torch.float64), p, seed).view(rows, HIDDEN)

    def masked_math(x, fc, out):
        return out(F.gelu(fc(x)) * mask.to(x.dtype))

    def blocked(x, fc, out):
        torch.manual_seed(12)
        return gelu_mlp(x, fc, out, "custom", dropout_p=p)

    ref = _run(masked_math, x64, layers, torch.float64)
    low = _run(masked_math, x64, layers, dtype)
    got = _run(blocked, x64, layers, dtype)
    assert (mask == 0).any() and (mask != 0).any()
    parity.check_fwd_bwd(ref, low, got, dtype, names=["x", "w1", "b1", "w2", "b2"]).assert_ok()


def test_dropout_needs_the_dropout_kernels_dtypes():
    cpu = torch.device("cpu")
    assert registry.select_name(OP, "auto", KernelRequest(cpu, torch.float32, dropout_p=0.1)) == (
        "custom" if native.module_with(cpu, "dropout")[1] is None else "math")
    assert registry.select_name(OP, "auto", KernelRequest(cpu, torch.bfloat16, dropout_p=0.1)) == "math"
    with pytest.raises(ValueError, match="dropout probability"):
        gelu_mlp(torch.zeros(2, D), *(m.float() for m in _layers()), dropout_p=1.0)


def test_block_without_dropout_equals_the_math_block():
    """Outside dropout (eval, or dropout 0) the blocked Block computes what the --kernels math Block computes."""
    torch.manual_seed(5)
    for dropout_p, training in ((0.0, True), (0.3, False)):
        fast = Block(D, 4, 4, dropout_p, 0.0, "auto").train(training)
        slow = Block(D, 4, 4, dropout_p, 0.0, "math").train(training)
        slow.load_state_dict(fast.state_dict())
        x = torch.randn(2, 11, D)
        torch.testing.assert_close(fast(x, None), slow(x, None), rtol=1e-5, atol=1e-5)


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


def test_small_inputs_run_the_ops_one_by_one_and_large_ones_in_blocks(monkeypatch):
    monkeypatch.setattr(mlp, "MIN_BLOCKED_ELEMENTS", DEFAULT_MIN_BLOCKED)
    fc, out = (m.float() for m in _layers(8))
    rows = DEFAULT_MIN_BLOCKED // HIDDEN + 1
    for n, blocked in ((rows - 1, False), (rows, True)):  # rows * HIDDEN: just under, just over the threshold
        y = gelu_mlp(torch.randn(n, D, requires_grad=True), fc, out, "custom")
        assert _in_graph(y, "_BlockedGeluMLPBackward") == blocked


def _in_graph(y: torch.Tensor, name: str) -> bool:
    """Whether a node named `name` is in y's autograd graph."""
    todo, seen = [y.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == name:
            return True
        todo.extend(n for n, _ in node.next_functions)
    return False
