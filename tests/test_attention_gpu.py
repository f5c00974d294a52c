"""masked_attention on the GPU backends (custom CUDA/HIP, triton, sdpa) against float64 math.

Skipped without a GPU (the integrator's GPU run executes them). A backend that cannot run on that GPU
is skipped with its reason; one that runs and disagrees fails. With AAM_REQUIRE_BACKENDS (tests/conftest.py)
the skips of the listed backends are failures.
"""

from __future__ import annotations

import pytest
import torch

from aam.errors import BackendUnavailable
from aam.ops import registry
from aam.ops.attention import OP, custom, masked_attention, self_check
from aam.ops.attention.selfcheck import assert_parity, make_case
from aam.ops.registry import KernelRequest

GPU_BACKENDS = ["custom", "triton", "sdpa"]
pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: torch.cuda.is_available() is False"),
              pytest.mark.gpu(*GPU_BACKENDS)]


def _on_gpu(*tensors):
    return [t.cuda() for t in tensors]


def _require(backend, dtype, d=16):
    q = torch.zeros(1, 1, 2, d, dtype=dtype, device="cuda")
    try:
        masked_attention(q, q, q, backend=backend)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _poison(poison_outputs):
    poison_outputs(custom)
    try:
        import aam.kernels.attention as tk

        poison_outputs(tk)
    except ImportError:
        pass


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,seq", [(1, 1), (3, 7), (3, 149), (3, 150), (127, 151), (2, 1024)])
def test_gpu_parity(backend, dtype, n, seq):
    _require(backend, dtype)
    q, k, v, dout, mask = _on_gpu(*make_case(n, seq, d=32, seed=n + seq))
    assert_parity(backend, dtype, q, k, v, dout, mask)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_gpu_head_dims_holes_and_lengths(backend, d):
    _require(backend, torch.float32, d)
    q, k, v, dout, mask = _on_gpu(*make_case(5, 77, h=3, d=d, seed=d, holes=True))
    assert_parity(backend, torch.float32, q, k, v, dout, mask)
    lengths = torch.tensor([0, 1, 40, 77, 13])
    q, k, v, dout, mask = _on_gpu(*make_case(5, 77, d=d, lengths=lengths))
    assert_parity(backend, torch.float32, q, k, v, dout, mask, lengths=lengths.cuda())


def test_gpu_auto_prefers_a_compiled_backend_and_self_checks_pass():
    name = registry.select_name(OP, "auto", KernelRequest("cuda", torch.bfloat16, head_dim=32))
    assert name in ("triton", "custom", "sdpa")
    for backend in GPU_BACKENDS:
        try:
            res = self_check(backend, "cuda")
        except BackendUnavailable:
            continue
        assert res["ok"], f"{backend}: {res['detail']}"


@pytest.mark.gpu("custom")
def test_gpu_torch_compile_custom_op():
    _require("custom", torch.bfloat16, 32)
    q, k, v = (torch.randn(4, 2, 33, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mask = (torch.arange(33)[None] >= torch.tensor([33, 0, 1, 20])[:, None]).cuda()

    def f(a, b, c):
        return masked_attention(a, b, c, key_padding_mask=mask, backend="custom")

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, v), f(q, k, v))
