"""Packed variable-length attention (masked_attention_varlen) on the Triton backend.

On the CPU the kernels run under TRITON_INTERPRET=1 in a child pytest (the variable must be set before
triton is imported and must not leak into the rest of the suite), fp32 and fp16 at small sizes. With a
GPU the same tests also run directly on it, with bf16 and every head dim added.
Reference: float64 `_varlen_math` with DESIGN.md's parity rule; outputs are poisoned with NaN first.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from subprocess_env import has_triton, pytest_file_in_interpreter

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = [pytest.mark.triton]


if INTERPRET:
    DEVICE = torch.device("cpu")
    DTYPES = [torch.float32, torch.float16]
    HEAD_DIMS = [16, 32]
elif torch.cuda.is_available() and has_triton():
    DEVICE = torch.device("cuda")
    DTYPES = [torch.float32, torch.float16, torch.bfloat16]
    HEAD_DIMS = [16, 32, 64, 128]
else:
    DEVICE = None
    DTYPES = [torch.float32]
    HEAD_DIMS = [16]


def on_device(test):
    """A test of the Triton kernels on DEVICE with outputs poisoned; without a device it is collected and
    skipped (a failure under AAM_REQUIRE_BACKENDS=triton)."""
    test = pytest.mark.usefixtures("_poison")(test)
    test = pytest.mark.skipif(DEVICE is None, reason="no GPU with triton (the CPU runs these tests under "
                              "TRITON_INTERPRET=1 in the subprocess test)")(test)
    return pytest.mark.gpu("triton")(test)


if not INTERPRET:

    @pytest.mark.slow
    @pytest.mark.skipif(not has_triton(), reason="triton is not installed")
    def test_triton_varlen_in_interpreter_subprocess():
        pytest_file_in_interpreter(__file__)


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)


def _packed_case(lengths: list[int], h: int, d: int, seed: int, fused: bool = False):
    """float64 q, k, v, dout [T, H, Dh]; fused: q, k, v are strided views of one [T, 3, H, Dh] tensor."""
    g = torch.Generator().manual_seed(seed)
    t = sum(lengths)
    if fused:
        qkv = torch.randn(t, 3, h, d, generator=g, dtype=torch.float64)
        q, k, v = qkv.unbind(1)
    else:
        q, k, v = (torch.randn(t, h, d, generator=g, dtype=torch.float64) for _ in range(3))
    dout = torch.randn(t, h, d, generator=g, dtype=torch.float64)
    return q, k, v, dout


def _run(backend: str, dtype: torch.dtype, q, k, v, dout, cu, max_seqlen):
    """Output and gradients (float64) of masked_attention_varlen; q, k, v keep their strides."""
    from aam.ops.attention import masked_attention_varlen

    inputs = [x.to(DEVICE, dtype).requires_grad_(True) for x in (q, k, v)]
    if q.stride(0) != q.shape[1] * q.shape[2]:  # keep the fused layout on the device
        fused = torch.stack([q, k, v], 1).to(DEVICE, dtype).requires_grad_(True)
        inputs = list(fused.unbind(1))
        leaves = [fused]
    else:
        leaves = inputs
    out = masked_attention_varlen(*inputs, cu.to(DEVICE), max_seqlen, backend=backend)
    grads = torch.autograd.grad(out, leaves, dout.to(DEVICE, dtype))
    if len(leaves) == 1:
        grads = grads[0].unbind(1)
    return out.detach().double().cpu(), [x.double().cpu() for x in grads]


def _assert_parity(dtype: torch.dtype, lengths: list[int], h: int, d: int, seed: int, fused: bool = False):
    from aam.ops import parity

    q, k, v, dout = _packed_case(lengths, h, d, seed, fused)
    cu, max_seqlen = _cu(lengths), max(lengths)
    ref = _run("math", torch.float64, q, k, v, dout, cu, max_seqlen)
    low = _run("math", dtype, q, k, v, dout, cu, max_seqlen)
    got = _run("triton", dtype, q, k, v, dout, cu, max_seqlen)
    parity.check_fwd_bwd(ref, low, got, dtype, names=("dq", "dk", "dv"), what=f"triton varlen d={d}").assert_ok()


@pytest.fixture
def _poison(poison_outputs):
    import aam.kernels.attention as tk
    from aam.ops.attention import custom

    poison_outputs(custom, tk)


# lengths 0, 1, 7, 64, 65 and one of 149-151 in every case, in varying order
LENGTHS = {16: [7, 0, 1, 64, 65, 150], 32: [151, 65, 1, 0, 64, 7], 64: [64, 149, 0, 7, 1, 65, 1024],
           128: [1, 150, 7, 0, 65, 64, 300]}


@on_device
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_varlen_triton_parity(dtype, d):
    # d=32: q, k, v are strided views of one fused [T, 3, H, Dh] tensor; one head where the two-head
    # case adds nothing but interpreter time (fp16, d=32)
    h = 1 if d == 32 or (INTERPRET and dtype == torch.float16) else 2
    _assert_parity(dtype, LENGTHS[d], h=h, d=d, seed=d, fused=d == 32)


@on_device
@pytest.mark.parametrize("dtype", DTYPES[:1] if INTERPRET else DTYPES)
def test_varlen_triton_equals_padded_triton(dtype):
    """The packed form and the padded op (key_lengths) run the same kernels: identical results, and
    the saved LSE [T, H] is the float64 log-sum-exp."""

    lengths = [5, 0, 1, 33, 17, 20]
    b, h, d, seq = len(lengths), 2, 16, max(lengths)
    q, k, v, dout = (x.to(DEVICE, dtype) for x in _packed_case(lengths, h, d, seed=3))
    cu = _cu(lengths).to(DEVICE)
    lens = torch.tensor(lengths, device=DEVICE)
    which = torch.repeat_interleave(torch.arange(b, device=DEVICE), lens)
    pos = torch.arange(q.shape[0], device=DEVICE) - cu[which]

    def pad(x):  # [T, H, Dh] -> [B, H, L, Dh], zeros at padding
        out = x.new_zeros(b, seq, h, d)
        out[which, pos] = x
        return out.transpose(1, 2)

    def unpad(x):  # [B, H, L, ...] -> [T, H, ...]
        return x.transpose(1, 2)[which, pos]

    scale = 1 / math.sqrt(d)
    packed = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out, lse = torch.ops.aam.attention_triton_varlen_fwd(*packed, cu, seq, scale)
    grads = torch.autograd.grad(out, packed, dout)
    padded = [pad(x).requires_grad_(True) for x in (q, k, v)]
    out_p, lse_p = torch.ops.aam.attention_triton_fwd(*padded, lens, None, scale)
    grads_p = torch.autograd.grad(out_p, padded, pad(dout))
    assert torch.equal(out, unpad(out_p))
    assert torch.equal(lse, unpad(lse_p))
    for gr, gp in zip(grads, grads_p, strict=True):
        assert torch.equal(gr, unpad(gp))
    # padded keys of the padded op get exactly 0 gradient (its own contract), so nothing is lost
    s64 = torch.einsum("bhqd,bhkd->bhqk", pad(q).double(), pad(k).double()) * scale
    s64 = s64.masked_fill(torch.arange(seq, device=DEVICE)[None, None, None, :] >= lens[:, None, None, None],
                          float("-inf"))
    ref_lse = unpad(torch.logsumexp(s64, -1))
    torch.testing.assert_close(lse.double(), ref_lse, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-2)


@on_device
def test_varlen_triton_empty_batches():
    """No sequences, and only empty sequences: nothing to launch, empty outputs and gradients."""
    from aam.ops.attention import masked_attention_varlen

    for cu, t in ((torch.tensor([0]), 0), (torch.tensor([0, 0, 0]), 0)):
        q = torch.randn(t, 2, 16, device=DEVICE, requires_grad=True)
        out = masked_attention_varlen(q, q, q, cu.to(DEVICE), 0, backend="triton")
        (grad,) = torch.autograd.grad(out.sum(), q, allow_unused=True)
        assert out.shape == (0, 2, 16) and (grad is None or grad.shape == (0, 2, 16))


@on_device
def test_varlen_triton_opcheck():
    g = torch.Generator().manual_seed(8)
    t = torch.randn(9, 2, 16, generator=g).to(DEVICE).requires_grad_(True)
    cu = torch.tensor([0, 4, 4, 9], device=DEVICE)
    torch.library.opcheck(torch.ops.aam.attention_triton_varlen_fwd.default,
                          (t, t.detach() * 0.5, t.detach(), cu, 5, 0.3),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


if INTERPRET:

    def test_varlen_triton_refusals_in_interpreter():
        from aam.errors import BackendUnavailable
        from aam.ops import attention as A

        cu = torch.tensor([0, 4])
        with pytest.raises(BackendUnavailable, match="bfloat16"):
            x = torch.randn(4, 1, 16, dtype=torch.bfloat16)
            A.masked_attention_varlen(x, x, x, cu, 4, backend="triton")
        x = torch.randn(4, 1, 16)
        with pytest.raises(BackendUnavailable, match="no dropout"):
            A.masked_attention_varlen(x, x, x, cu, 4, dropout_p=0.1, backend="triton")
        with pytest.raises(BackendUnavailable, match="head_dim"):
            y = torch.randn(4, 1, 8)
            A.masked_attention_varlen(y, y, y, cu, 4, backend="triton")
        # the interpreter is for tests: `auto` never takes it
        from aam.ops import registry

        req = registry.KernelRequest("cpu", torch.float32, head_dim=16)
        assert registry.select_name(A.OP_VARLEN, "auto", req) != "triton"
