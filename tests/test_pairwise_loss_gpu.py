"""GPU parity of the pairwise UniFrac loss: CUDA/HIP `custom` kernels and Triton, against float64 math.

Skipped without a GPU (with AAM_REQUIRE_BACKENDS, a failure for the listed backends). Parity follows
DESIGN.md section 3; every output buffer the kernels write (coefficients, partial sums, loss sums, the
gradient) is allocated NaN-filled, so an unwritten element cannot pass.
"""

from __future__ import annotations

import pytest
import torch

import aam.ops
from aam import native
from aam.ops import registry
from aam.ops.pairwise_loss import OP, custom, pairwise_loss_math
from aam.ops.parity import assert_parity
from aam.ops.registry import KernelRequest

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA/ROCm GPU in this torch"),
              pytest.mark.gpu("custom", "triton")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 8), (2, 8), (7, 37), (127, 64), (1000, 256)]


def _available(backend: str, dtype: torch.dtype) -> str | None:
    req = KernelRequest("cuda", dtype, batch=8, dim=8)
    return dict(registry.status(OP, req)).get(backend, "not registered")


@pytest.fixture(autouse=True)
def _poison(poison_outputs):
    """The custom and Triton kernels allocate their outputs through `_empty`: NaN-filled here."""
    poison_outputs(custom)
    if native.has_triton()[0]:
        poison_outputs(native.triton_kernels("pairwise_loss"))


def _run(fn, emb, target, transform, weights):
    x = emb.detach().clone().requires_grad_(True)
    loss = fn(x, target, transform, 5.0, weights)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g


@pytest.mark.parametrize("backend", ["custom", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b,d", SHAPES)
@pytest.mark.parametrize("transform", ["identity", "tanh"])
@pytest.mark.parametrize("weighted", [False, True])
def test_gpu_parity(backend, dtype, b, d, transform, weighted):
    reason = _available(backend, dtype)
    if reason:
        pytest.skip(f"{backend} unavailable on this GPU: {reason}")
    emb = (torch.randn(b, d, device="cuda", dtype=torch.float64) + 1.0).to(dtype)
    target = torch.rand(b, b, device="cuda", dtype=torch.float64) * 3.0
    w = None
    if weighted:
        w = torch.rand(b, b, device="cuda", dtype=torch.float64)
        w[torch.rand(b, b, device="cuda") < 0.3] = 0.0
    ref = _run(pairwise_loss_math, emb.double(), target, transform, w)
    lp = _run(pairwise_loss_math, emb, target.to(dtype), transform, None if w is None else w.to(dtype))

    def kernel(*a):
        return aam.ops.pairwise_unifrac_loss(*a, backend=backend)

    got = _run(kernel, emb, target.float(), transform, None if w is None else w.float())
    assert got[0].dtype == dtype and got[1].dtype == dtype
    assert_parity(ref[0], lp[0], got[0], "forward", dtype, what=backend)
    assert_parity(ref[1], lp[1], got[1], "backward", dtype, what=backend)
    # deterministic: a second run gives the same bits
    again = _run(kernel, emb, target.float(), transform, None if w is None else w.float())
    assert torch.equal(got[0], again[0]) and torch.equal(got[1], again[1])


@pytest.mark.parametrize("backend", ["custom", "triton"])
def test_gpu_duplicates_and_large_batch(backend):
    reason = _available(backend, torch.float32)
    if reason:
        pytest.skip(f"{backend} unavailable on this GPU: {reason}")
    e = torch.randn(9, 16, device="cuda")
    e[5] = e[2]
    x = e.clone().requires_grad_(True)
    aam.ops.pairwise_unifrac_loss(x, torch.rand(9, 9, device="cuda"), backend=backend).backward()
    assert torch.isfinite(x.grad).all()
    b, d = 16384, 64
    emb = torch.randn(b, d, device="cuda", requires_grad=True)
    target = torch.rand(b, b, device="cuda")
    loss = aam.ops.pairwise_unifrac_loss(emb, target, backend=backend)
    loss.backward()
    ref = pairwise_loss_math(emb.detach().double(), target.double(), "identity", 10.0, None)
    assert float(loss) == pytest.approx(float(ref), rel=1e-4)
    assert torch.isfinite(emb.grad).all()


def test_gpu_auto_picks_a_kernel():
    """auto takes Triton where it is installed, else the CUDA/HIP module where it is built, else math."""
    if native.has_triton()[0]:
        want = "triton"
    elif native.module_with(torch.device("cuda"), "pairwise_loss_forward")[1] is None:
        want = "custom"
    else:
        want = "math"
    req = KernelRequest("cuda", torch.float32, batch=64, dim=32)
    assert registry.select(OP, "auto", req).name == want
