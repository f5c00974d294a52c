"""The CUDA/HIP kernels (csrc/cuda/*.cu) run on the CPU emulator (csrc/emu/cuda_emu.h) against float64 math.

aam._C_emu32 / aam._C_emu64 are the very same .cu sources compiled as C++ with a 32-lane warp (CUDA)
and a 64-lane wavefront (HIP). The tests route the real Python glue (aam.ops.attention.custom._gpu_forward /
_gpu_backward and aam.ops.pairwise_loss.custom._gpu_fwd / _gpu_bwd, through their custom ops and autograd) to
an emulator module, with CPU tensors as device memory, and apply DESIGN.md's parity rule. The packed
varlen attention (_gpu_varlen_forward / _gpu_varlen_backward) is checked against _varlen_math.

Memory guard: every buffer the glue hands to a kernel is copied into a larger buffer between canaries of
0xFF bytes (NaN in fp32/fp16/bf16/fp64); outputs are poisoned with 0xFF inside. A write out of bounds
breaks a canary, an output element left unwritten stays NaN, a write into an input changes it. Input
regions that the contracts say are never read are NaN as well: padded keys of k/v, the lower triangle
and diagonal of the loss target and weights, the targets of pairs with weight 0.

Schedules: every kernel test runs with a block's threads at once (as on a GPU) and, for races, one thread
at a time between barriers in increasing and in decreasing thread order with shared memory poisoned
(csrc/emu/cuda_emu.h): a missing __syncthreads makes a thread read NaN or a stale value in one of them.
"""

from __future__ import annotations

import ctypes
import importlib
import os
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

from aam import native
from aam.ops.attention import custom as A
from aam.ops.attention.selfcheck import assert_parity as assert_attention_parity
from aam.ops.attention.selfcheck import assert_varlen_parity, make_case, make_varlen_case
from aam.ops.pairwise_loss import custom as P
from aam.ops.pairwise_loss import pairwise_loss_math
from aam.ops.pairwise_loss.opdefs import run
from aam.ops.parity import assert_parity
from aam.ops.registry import KernelRequest

CANARY = 4096  # bytes of 0xFF before and after every buffer
ELT = {0: 4, 1: 2, 2: 2}  # bytes per element of the kernels' dtype codes
NAN = float("nan")


@dataclass
class Buf:
    """A pointer argument of a kernel entry point: its size in bytes and whether the kernel writes it."""

    name: str
    ptr: int
    nbytes: int
    out: bool = False


def _read(ptr: int, nbytes: int) -> torch.Tensor:
    t = torch.empty(nbytes, dtype=torch.uint8)
    ctypes.memmove(t.data_ptr(), ptr, nbytes)
    return t


class Guarded:
    """Stands in for aam._C_cuda: forwards to an emulator module with every buffer between canaries."""

    def __init__(self, mod):
        self.mod = mod
        self.calls: Counter[str] = Counter()
        self.platform, self.warp_size = mod.platform, mod.warp_size

    def _call(self, fn: str, *args):
        self.calls[fn] += 1
        staged: dict[str, tuple[Buf, torch.Tensor, torch.Tensor | None]] = {}
        call_args = []
        for a in args:
            if not isinstance(a, Buf):
                call_args.append(a)
                continue
            if a.ptr == 0:
                call_args.append(0)
                continue
            g = torch.full((2 * CANARY + a.nbytes,), 0xFF, dtype=torch.uint8)
            orig = None
            if not a.out:
                orig = _read(a.ptr, a.nbytes)
                g[CANARY:CANARY + a.nbytes] = orig
            staged[a.name] = (a, g, orig)
            call_args.append(g.data_ptr() + CANARY)
        getattr(self.mod, fn)(*call_args)
        for name, (a, g, orig) in staged.items():
            inner = g[CANARY:CANARY + a.nbytes]
            before_ok, after_ok = bool((g[:CANARY] == 0xFF).all()), bool((g[CANARY + a.nbytes:] == 0xFF).all())
            assert before_ok, f"{fn}: write before the start of {name}"
            assert after_ok, f"{fn}: write past the end of {name}"
            if a.out:
                ctypes.memmove(a.ptr, inner.data_ptr(), a.nbytes)
            else:
                unchanged = torch.equal(inner, orig)
                assert unchanged, f"{fn}: the kernel wrote into its input {name}"

    def attention_forward(self, dtype, q, k, v, o, lse, bound, mask, n, h, seq, d, scale, stream):
        x, rows = n * h * seq * d * ELT[dtype], n * h * seq * 4
        self._call("attention_forward", dtype, Buf("q", q, x), Buf("k", k, x), Buf("v", v, x),
                   Buf("o", o, x, True), Buf("lse", lse, rows, True), Buf("bound", bound, n * 4),
                   Buf("mask", mask, n * seq), n, h, seq, d, scale, stream)

    def attention_backward(self, dtype, q, k, v, o, dout, lse, delta, dq, dk, dv, bound, mask, n, h, seq, d, scale,
                           stream):
        x, rows = n * h * seq * d * ELT[dtype], n * h * seq * 4
        self._call("attention_backward", dtype, Buf("q", q, x), Buf("k", k, x), Buf("v", v, x), Buf("o", o, x),
                   Buf("dout", dout, x), Buf("lse", lse, rows), Buf("delta", delta, rows, True),
                   Buf("dq", dq, x, True), Buf("dk", dk, x, True), Buf("dv", dv, x, True),
                   Buf("bound", bound, n * 4), Buf("mask", mask, n * seq), n, h, seq, d, scale, stream)

    def attention_varlen_forward(self, dtype, q, k, v, o, lse, cu, t, b, h, max_seqlen, d, scale, stream):
        x, rows = t * h * d * ELT[dtype], t * h * 4
        self._call("attention_varlen_forward", dtype, Buf("q", q, x), Buf("k", k, x), Buf("v", v, x),
                   Buf("o", o, x, True), Buf("lse", lse, rows, True), Buf("cu_seqlens", cu, (b + 1) * 4), t, b, h,
                   max_seqlen, d, scale, stream)

    def attention_varlen_backward(self, dtype, q, k, v, o, dout, lse, delta, dq, dk, dv, cu, t, b, h, max_seqlen, d,
                                  scale, stream):
        x, rows = t * h * d * ELT[dtype], t * h * 4
        self._call("attention_varlen_backward", dtype, Buf("q", q, x), Buf("k", k, x), Buf("v", v, x),
                   Buf("o", o, x), Buf("dout", dout, x), Buf("lse", lse, rows), Buf("delta", delta, rows, True),
                   Buf("dq", dq, x, True), Buf("dk", dk, x, True), Buf("dv", dv, x, True),
                   Buf("cu_seqlens", cu, (b + 1) * 4), t, b, h, max_seqlen, d, scale, stream)

    def pairwise_loss_num_partials(self, b):
        return self.mod.pairwise_loss_num_partials(b)

    def pairwise_loss_forward(self, emb, target, weights, coef, partials, sums, b, d, dtype, use_tanh, scale,
                              stream):
        nparts = self.mod.pairwise_loss_num_partials(b)
        self._call("pairwise_loss_forward", Buf("emb", emb, b * d * ELT[dtype]), Buf("target", target, b * b * 4),
                   Buf("weights", weights, b * b * 4), Buf("coef", coef, b * b * 4, True),
                   Buf("partials", partials, nparts * 8, True), Buf("sums", sums, 16, True), b, d, dtype,
                   use_tanh, scale, stream)

    def pairwise_loss_backward(self, emb, coef, factor, grad, b, d, dtype, stream):
        self._call("pairwise_loss_backward", Buf("emb", emb, b * d * ELT[dtype]), Buf("coef", coef, b * b * 4),
                   Buf("factor", factor, 4), Buf("grad", grad, b * d * ELT[dtype], True), b, d, dtype, stream)


def _emu_module(warp: int):
    try:
        mod = importlib.import_module(f"aam._C_emu{warp}")
    except ImportError as exc:
        if os.environ.get("AAM_REQUIRE_EMULATOR") == "1":  # make test: the install built it, so it must load
            raise
        pytest.skip(f"aam._C_emu{warp} not built (make dev and make test build it): {exc}")
    assert mod.platform == "emu" and mod.warp_size == warp
    return mod


CONCURRENT, FORWARD, REVERSE = 0, 1, 2  # the emulator's thread schedules (csrc/emu/cuda_emu.h)
# Each kernel test runs with the threads of a block at once (as a GPU), and one at a time between barriers
# in increasing and in decreasing order with shared memory poisoned: a missing __syncthreads changes the
# results under at least one serial order. Both warp widths see every schedule.
SCHEDULES = [(32, CONCURRENT), (64, CONCURRENT), (32, FORWARD), (64, FORWARD), (32, REVERSE), (64, REVERSE)]


@pytest.fixture(params=SCHEDULES, ids=lambda p: f"warp{p[0]}-{('concurrent', 'forward', 'reverse')[p[1]]}")
def emu(request, monkeypatch) -> Guarded:
    """The GPU glue of attention and the pairwise loss, on CPU tensors, running the emulated kernels."""
    warp, schedule = request.param
    mod = _emu_module(warp)
    mod.emu_set_schedule(schedule)
    request.addfinalizer(lambda: mod.emu_set_schedule(CONCURRENT))
    guarded = Guarded(mod)
    guarded.schedule = schedule
    monkeypatch.setattr(native, "gpu_module", lambda: guarded)
    monkeypatch.setattr(native, "stream_handle", lambda device: 0)
    # The custom ops' CPU implementations call these by name: CPU tensors now take the GPU path.
    monkeypatch.setattr(A, "_cpu_forward", A._gpu_forward)
    monkeypatch.setattr(A, "_cpu_backward", A._gpu_backward)
    monkeypatch.setattr(A, "_cpu_varlen_forward", A._gpu_varlen_forward)
    monkeypatch.setattr(A, "_cpu_varlen_backward", A._gpu_varlen_backward)
    monkeypatch.setattr(P, "_cpu_fwd", P._gpu_fwd)
    monkeypatch.setattr(P, "_cpu_bwd", P._gpu_bwd)
    return guarded


# ---- the emulator itself ------------------------------------------------------------------------------

@pytest.mark.parametrize("warp", [32, 64])
def test_half_and_bf16_conversions_match_torch(warp):
    mod = _emu_module(warp)
    every16 = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16)
    g = torch.Generator().manual_seed(3)
    bits = torch.randint(-(1 << 31), 1 << 31, (200_000,), generator=g, dtype=torch.int64).to(torch.int32)
    # every half/bf16 value, the midpoints between neighbours (ties), their neighbours, random floats
    halves = every16.view(torch.float16).float()
    bf = every16.view(torch.bfloat16).float()
    mid_h = (halves[:-1].double() + halves[1:].double()).div(2).float()
    mid_b = (bf[:-1].double() + bf[1:].double()).div(2).float()
    xs = torch.cat([halves, bf, mid_h, mid_b, mid_h.nextafter(torch.tensor(float("inf"))),
                    mid_h.nextafter(torch.tensor(-float("inf"))), bits.view(torch.float32),
                    torch.tensor([0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e-8, 2.0**-25, 2.0**-24 * 1.5,
                                  float("inf"), -float("inf"), NAN, 3.4e38])])
    xs = xs.contiguous()
    for op, dt in ((0, torch.float16), (2, torch.bfloat16)):
        got = torch.empty(xs.shape, dtype=dt)
        mod.emu_convert(op, xs.data_ptr(), got.data_ptr(), xs.numel())
        want = xs.to(dt)
        same = (got.view(torch.int16) == want.view(torch.int16)) | (got.isnan() & want.isnan())
        assert bool(same.all()), f"float -> {dt}: {xs[~same][:5].tolist()} -> {got[~same][:5].tolist()}"
        back = torch.empty(xs.shape, dtype=torch.float32)
        mod.emu_convert(op + 1, got.data_ptr(), back.data_ptr(), xs.numel())
        want_back = got.float()
        same = (back == want_back) | (back.isnan() & want_back.isnan())
        assert bool(same.all()), f"{dt} -> float differs from torch"


@pytest.mark.parametrize("warp", [32, 64])
def test_barriers_and_shuffles_reduce_exactly(warp):
    mod = _emu_module(warp)
    x = torch.randint(-1000, 1000, (3 * 256,), dtype=torch.int32).float()  # integer sums: exact in fp32
    out = torch.full((3,), NAN)
    mod.emu_block_sum(x.data_ptr(), out.data_ptr(), 3 * 256 - 5)
    assert torch.equal(out, torch.cat([x[:-5], torch.zeros(5)]).view(3, 256).sum(1))
    warps = torch.full((3 * 256 // warp,), NAN)
    mod.emu_warp_sum(x.data_ptr(), warps.data_ptr(), 3)
    assert torch.equal(warps, x.view(-1, warp).sum(1))


@pytest.mark.parametrize("warp", [32, 64])
def test_serial_schedules_expose_a_missing_barrier(warp):
    """out[t] = in[(t + 1) % n] through shared memory: with the __syncthreads every schedule is exact; without
    it (a race) the forward order reads 127 poisoned (NaN) slots and the reverse order one."""
    mod = _emu_module(warp)
    x = torch.arange(128, dtype=torch.float32)
    try:
        for schedule, nan_without_barrier in ((CONCURRENT, None), (FORWARD, 127), (REVERSE, 1)):
            mod.emu_set_schedule(schedule)
            out = torch.full((128,), -1.0)
            mod.emu_rotate(x.data_ptr(), out.data_ptr(), 128, True)
            assert torch.equal(out, torch.roll(x, -1))
            if nan_without_barrier is not None:
                mod.emu_rotate(x.data_ptr(), out.data_ptr(), 128, False)
                assert int(out.isnan().sum()) == nan_without_barrier
    finally:
        mod.emu_set_schedule(CONCURRENT)
    with pytest.raises(ValueError, match="schedule"):
        mod.emu_set_schedule(3)


@pytest.mark.parametrize("warp", [32, 64])
@pytest.mark.parametrize("which,message", [(0, "divergent __syncthreads"), (1, "shuffle at line .* after some"),
                                           (2, "invalid configuration")])
def test_rule_breaking_launches_fail(warp, which, message):
    mod = _emu_module(warp)
    buf = torch.zeros(1024)
    with pytest.raises(RuntimeError, match=message):
        mod.emu_bad_launch(which, buf.data_ptr())
    mod.emu_block_sum(buf.data_ptr(), buf.data_ptr() + 4 * 512, 4)  # the error was consumed: launches work again


# ---- masked attention ------------------------------------------------------------------------------------

def _attention_parity(dtype, q, k, v, dout, mask, lengths=None) -> None:
    """DESIGN.md parity and the contract (aam.ops.attention.selfcheck) with NaN in the padded keys of the
    kernel's k and v."""
    assert_attention_parity("custom", dtype, q, k, v, dout, mask, lengths, nan_padding=True)


F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# Every dtype x head dim once; the lengths cycle through 1, 7, 64, 65, 149, 151 (tiles of 64 rows and 32
# keys: one, exactly one, one plus one, several); mask forms: prefix mask, mask with holes, key_lengths.
ATTENTION_CASES = [
    (F32, 16, 1, "mask"), (F16, 16, 65, "holes"), (BF16, 16, 151, "lengths"),
    (F32, 32, 7, "holes"), (F16, 32, 149, "lengths"), (BF16, 32, 64, "mask"),
    (F32, 64, 64, "lengths"), (F16, 64, 1, "holes"), (BF16, 64, 149, "holes"),
    (F32, 128, 151, "holes"), (F16, 128, 7, "mask"), (BF16, 128, 65, "lengths"),
]


@pytest.mark.parametrize("dtype,d,seq,form", ATTENTION_CASES, ids=lambda x: str(x).removeprefix("torch."))
def test_attention_parity(emu, dtype, d, seq, form):
    # n = 3: a full row, a row without keys and a length-1 row (make_case); h = 2
    q, k, v, dout, mask = make_case(3, seq, h=2, d=d, seed=d + seq, holes=form == "holes")
    lengths = (~mask).sum(-1) if form == "lengths" else None
    _attention_parity(dtype, q, k, v, dout, mask, lengths)
    assert emu.calls["attention_forward"] == 1 and emu.calls["attention_backward"] == 1


def test_attention_every_row_padded_and_single_sequence(emu):
    for n, lengths in ((2, torch.tensor([0, 0])), (1, torch.tensor([70]))):
        q, k, v, dout, mask = make_case(n, 70, h=1, d=32, seed=n, lengths=lengths)
        _attention_parity(F32, q, k, v, dout, mask, lengths)


# ---- packed variable-length attention ------------------------------------------------------------------

# lengths with 0 and 1, one tile exactly, one past it, several tiles; max_seqlen None = the longest
# sequence, or a smaller hint (the kernels loop over the query tiles the grid does not cover).
VARLEN_CASES = [
    (F32, 16, [0, 1, 7, 65, 0, 130], None), (F16, 32, [1, 64, 0, 3], None),
    (BF16, 64, [33, 0, 1, 2], None), (F32, 128, [70, 1, 0, 5], 1),
]


@pytest.mark.parametrize("dtype,d,lengths,max_hint", VARLEN_CASES, ids=lambda x: str(x).removeprefix("torch."))
def test_attention_varlen_parity(emu, dtype, d, lengths, max_hint):
    q, k, v, dout, cu = make_varlen_case(lengths, h=2, d=d, seed=d + sum(lengths))
    assert_varlen_parity("custom", dtype, q, k, v, dout, cu, max_hint)
    assert emu.calls["attention_varlen_forward"] == 1 and emu.calls["attention_varlen_backward"] == 1


def test_attention_varlen_dispatch_accepts_the_gpu(emu):
    assert A.check_varlen(KernelRequest("cuda", torch.bfloat16, head_dim=64)) is None
    assert "head_dim" in A.check_varlen(KernelRequest("cuda", torch.bfloat16, head_dim=48))
    assert "dtype" in A.check_varlen(KernelRequest("cuda", torch.float64, head_dim=64))


# ---- pairwise UniFrac loss ---------------------------------------------------------------------------

SCALE = 5.0


def _emu_loss(emb, target, transform, scale, weights):
    """The GPU branch of pairwise_loss_custom: kernel dtype = emb dtype, fp32 target and weights."""
    return run(P.custom_fwd_op, emb, target, transform, scale, weights, emb.dtype, torch.float32)


def _loss_grad(fn, emb, target, transform, weights):
    x = emb.detach().clone().requires_grad_(True)
    loss = fn(x, target, transform, SCALE, weights)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g


def _loss_case(b, d, dtype, weighted, dup, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = (torch.randn(b, d, generator=g, dtype=torch.float64) + 1.0).to(dtype)
    if dup:
        emb[b - 1] = emb[0]
        emb[b // 2] = emb[0]
    target = torch.rand(b, b, generator=g, dtype=torch.float64) * 3.0
    w = None
    if weighted:
        w = torch.rand(b, b, generator=g, dtype=torch.float64)
        w[torch.rand(b, b, generator=g) < 0.3] = 0.0
    return emb, target, w


def _poisoned(target, w):
    """fp32 kernel inputs with NaN wherever the loss must not read: i >= j, and targets of weight-0 pairs."""
    lower = torch.ones_like(target, dtype=torch.bool).tril()
    t = target.float().masked_fill(lower, NAN)
    if w is None:
        return t, None
    return t.masked_fill(w == 0, NAN), w.float().masked_fill(lower, NAN)


# (B, D, dtype, transform, weighted, duplicate rows): B covers one tile, several, 100 (7 x 7 tiles); D one
# 32-dim chunk, a partial second one, four; every dtype with both transforms.
LOSS_CASES = [
    (2, 8, F32, "identity", False, False), (3, 33, F16, "tanh", True, False),
    (17, 8, BF16, "identity", True, True), (17, 128, F32, "tanh", False, True),
    (33, 33, BF16, "tanh", False, False), (33, 128, F16, "identity", True, True),
    (100, 33, F32, "tanh", True, True),
]


@pytest.mark.parametrize("b,d,dtype,transform,weighted,dup", LOSS_CASES, ids=lambda x: str(x).removeprefix("torch."))
def test_pairwise_loss_parity(emu, b, d, dtype, transform, weighted, dup):
    if b > 40 and emu.schedule != CONCURRENT:
        pytest.skip("B=100 runs concurrently only; the serial schedules (one thread at a time) cover B <= 33, "
                    "already several tiles in both kernels")
    emb, target, w = _loss_case(b, d, dtype, weighted, dup, seed=b + d)
    ref = _loss_grad(pairwise_loss_math, emb.double(), target, transform, w)
    lp = _loss_grad(pairwise_loss_math, emb, target.to(dtype), transform, None if w is None else w.to(dtype))
    t32, w32 = _poisoned(target, w)
    got = _loss_grad(_emu_loss, emb, t32, transform, w32)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    assert torch.isfinite(got[1]).all()
    assert_parity(ref[0], lp[0], got[0], "forward", dtype, what="emulated custom")
    assert_parity(ref[1], lp[1], got[1], "backward", dtype, what="emulated custom")
    assert emu.calls["pairwise_loss_forward"] == 1 and emu.calls["pairwise_loss_backward"] == 1


def test_pairwise_loss_deterministic_and_zero_weights(emu):
    emb, target, w = _loss_case(20, 40, F32, True, False, seed=1)
    t32, w32 = _poisoned(target, w)
    first = _loss_grad(_emu_loss, emb, t32, "identity", w32)
    again = _loss_grad(_emu_loss, emb, t32, "identity", w32)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    loss, grad = _loss_grad(_emu_loss, emb, target.float(), "tanh", torch.zeros(20, 20))
    assert float(loss) == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    emb[:] = emb[3]  # every pair at distance 0: gradient defined as 0
    loss, grad = _loss_grad(_emu_loss, emb, target.float(), "identity", None)
    assert torch.isfinite(loss) and torch.equal(grad, torch.zeros_like(grad))
