"""masked_attention_varlen on the GPU custom kernels (aam._C_cuda / _C_hip) against float64 math.

Skipped without a GPU (the integrator's GPU run executes them); the same kernels run on the CPU emulator
in tests/test_gpu_kernels_emulated.py. Outputs are poisoned with NaN before each run.
"""

from __future__ import annotations

import pytest
import torch

from aam.ops import registry
from aam.ops.attention import OP_VARLEN, custom
from aam.ops.attention.selfcheck import (
    assert_varlen_parity,
    make_varlen_case,
    self_check_masked_attention_varlen,
)
from aam.ops.registry import KernelRequest

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: torch.cuda.is_available() is False"),
              pytest.mark.gpu("custom")]
LENGTHS = [0, 1, 7, 150, 64, 65, 0, 300, 2]


def _require(dtype, d):
    reason = custom.check_varlen(KernelRequest("cuda", dtype, head_dim=d))
    if reason:
        pytest.skip(f"custom varlen unavailable on this GPU: {reason}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_gpu_varlen_parity(poison_outputs, dtype, d):
    _require(dtype, d)
    poison_outputs(custom)
    q, k, v, dout, cu = make_varlen_case(LENGTHS, h=3, d=d, seed=d, device="cuda")
    out, grads = assert_varlen_parity("custom", dtype, q, k, v, dout, cu)
    # max_seqlen only sizes the grid: a smaller hint gives the same bits (the kernels loop over tiles)
    out2, grads2 = assert_varlen_parity("custom", dtype, q, k, v, dout, cu, max_seqlen=16)
    assert torch.equal(out, out2) and all(torch.equal(a, b) for a, b in zip(grads, grads2, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_varlen_self_check_and_dispatch(dtype):
    _require(dtype, 16)
    res = self_check_masked_attention_varlen("custom", "cuda", dtype)
    assert res["ok"], res["detail"]
    name = registry.select_name(OP_VARLEN, "auto", KernelRequest("cuda", dtype, head_dim=32))
    assert name != "math"
