"""The Triton attention kernels under TRITON_INTERPRET=1 on the CPU (fp32 / fp16, small shapes).

TRITON_INTERPRET must be set before triton itself is imported, and it must not leak into the rest of
the suite (it would turn every later triton use into the interpreter). So, unless this process already
runs with TRITON_INTERPRET=1, the one collected test re-runs this file in a child pytest with it set.
"""

from __future__ import annotations

import os

import pytest
import torch

from subprocess_env import has_triton, pytest_file_in_interpreter

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = [pytest.mark.triton]


if not INTERPRET:

    @pytest.mark.slow
    @pytest.mark.skipif(not has_triton(), reason="triton is not installed")
    def test_triton_kernels_in_interpreter_subprocess():
        pytest_file_in_interpreter(__file__)

if INTERPRET:

    @pytest.fixture(scope="module")
    def interpreter():
        import aam.kernels.attention as mod

        return mod


    @pytest.fixture(autouse=True)
    def _poison(poison_outputs, interpreter):
        from aam.ops.attention import custom

        poison_outputs(custom, interpreter)


    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
    @pytest.mark.parametrize("n,seq,d,holes", [(1, 1, 16, False), (3, 7, 16, True), (3, 33, 32, False),
                                                (2, 40, 64, True)])
    def test_triton_parity(dtype, n, seq, d, holes):
        from aam.ops.attention.selfcheck import assert_parity, make_case

        q, k, v, dout, mask = make_case(n, seq, d=d, seed=seq + d, holes=holes)
        assert_parity("triton", dtype, q, k, v, dout, mask)


    def test_triton_key_lengths_and_opcheck():
        from aam.ops.attention.selfcheck import assert_parity, make_case

        lengths = torch.tensor([0, 1, 17])
        q, k, v, dout, mask = make_case(3, 17, lengths=lengths)
        assert_parity("triton", torch.float32, q, k, v, dout, mask, lengths=lengths)
        qf = q.float().requires_grad_(True)
        torch.library.opcheck(torch.ops.aam.attention_triton_fwd.default, (qf, k.float(), v.float(), None, mask, 0.25),
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


    def test_triton_refuses_bf16_in_interpreter():
        from aam.errors import BackendUnavailable
        from aam.ops.attention import masked_attention

        q = torch.randn(1, 1, 4, 16, dtype=torch.bfloat16)
        with pytest.raises(BackendUnavailable, match="bfloat16"):
            masked_attention(q, q, q, backend="triton")
