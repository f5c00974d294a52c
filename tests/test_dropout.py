"""aam.ops.dropout: the CPU kernel's counter-based mask (rate, scaling, gradient, reproducibility, independence),
the dispatch, and activation checkpointing reproducing the mask in the model."""

from __future__ import annotations

import pytest
import torch

from aam.models.transformer import Transformer
from aam.ops import registry
from aam.ops.dropout import _dropout_cpu, dropout, self_check_dropout
from aam.ops.registry import KernelRequest

needs_kernel = pytest.mark.native("dropout")


@needs_kernel
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rate_scale_and_gradient(p, dtype):
    n = 1 << 20
    x = (torch.rand(n, dtype=dtype) + 0.5).requires_grad_(True)  # no zeros: a 0 output means dropped
    out = dropout(x, p, True, "custom")
    kept = out != 0
    tol = 6 * (p * (1 - p) / n) ** 0.5
    assert abs((1 - kept.double().mean().item()) - p) <= tol
    scale = torch.tensor(1 / (1 - p), dtype=dtype)
    assert torch.equal(out[kept], x.detach()[kept] * scale)
    g = torch.randn(n, dtype=dtype)
    (grad,) = torch.autograd.grad(out, x, g)
    assert torch.equal(grad, torch.where(kept, g * scale, torch.zeros((), dtype=dtype)))


@needs_kernel
def test_masks_reproduce_with_the_seed_and_differ_between_calls():
    x = torch.ones(1 << 18)
    torch.manual_seed(3)
    a, b = dropout(x, 0.5, True, "custom"), dropout(x, 0.5, True, "custom")
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.5, True, "custom"), a)
    ka, kb = (a != 0).double(), (b != 0).double()
    assert abs(torch.corrcoef(torch.stack([ka, kb]))[0, 1].item()) < 0.01  # independent masks
    # no structure along the index: each of 64 blocks keeps about half (6 sigma), neighbours uncorrelated
    blocks = ka.view(64, -1).mean(1)
    assert ((blocks - 0.5).abs() <= 6 * (0.25 / ka.numel() * 64) ** 0.5).all()
    assert abs(torch.corrcoef(torch.stack([ka[:-1], ka[1:]]))[0, 1].item()) < 0.01


@needs_kernel
def test_same_seed_same_mask_for_any_size_split_and_opcheck():
    x = torch.randn(3, 70_001)
    full = _dropout_cpu(x, 0.25, 1234)
    assert torch.equal(_dropout_cpu(x.reshape(-1), 0.25, 1234).view(3, -1), full)  # mask is by flat index
    torch.library.opcheck(_dropout_cpu, (torch.randn(5, 7), 0.3, 99))


def test_identity_when_not_training_and_dispatch():
    x = torch.randn(10)
    assert dropout(x, 0.5, False) is x and dropout(x, 0.0, True) is x
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        dropout(x, 1.0, True)
    # bfloat16 on the CPU and an explicit math: torch's dropout, same contract
    y = dropout(torch.ones(4096, dtype=torch.bfloat16), 0.5, True)
    assert set(y.float().unique().tolist()) <= {0.0, 2.0}
    assert registry.select("dropout", "auto", KernelRequest("cpu", torch.bfloat16)).name == "math"
    assert self_check_dropout("math", "cpu")["ok"]


@needs_kernel
def test_self_check_and_auto_choice():
    assert registry.select("dropout", "auto", KernelRequest("cpu", torch.float32)).name == "custom"
    assert self_check_dropout("custom", "cpu")["ok"]


@needs_kernel
def test_checkpointing_recomputes_the_same_masks():
    """A recomputed block draws its seeds again from the restored generator: same loss and gradients."""
    x = torch.randn(3, 20, 32)
    pad = torch.zeros(3, 20, dtype=torch.bool)
    pad[1, 12:] = True
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = Transformer(32, 4, 2, dropout=0.2, gradient_checkpointing=ckpt).train()
        torch.manual_seed(1)
        xi = x.clone().requires_grad_(True)
        out = model(xi, pad)
        (out ** 2).sum().backward()
        results.append((out.detach(), xi.grad, [p.grad for p in model.parameters()]))
    (o0, g0, p0), (o1, g1, p1) = results
    assert torch.equal(o0, o1) and torch.equal(g0, g1)
    assert all(torch.equal(a, b) for a, b in zip(p0, p1, strict=True))
