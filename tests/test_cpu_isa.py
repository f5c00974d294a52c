"""The C++ CPU kernels' instruction-set paths, each forced with AAM_CPU_ISA on a CPU that has it (skipped with
the reason on one that does not): attention and the pairwise UniFrac loss (baseline, AVX2+FMA, AVX-512) against
float64 math with the parity rule of DESIGN.md; dropout (baseline, AVX2) against the mask's formula, bit for
bit; UniFrac's stripe kernels (baseline, AVX2) against scikit-bio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aam import native
from aam.ops import parity
from aam.ops.attention import selfcheck
from aam.ops.dropout import _dropout_cpu
from aam.ops.pairwise_loss.dispatch import pairwise_unifrac_loss
from aam.ops.pairwise_loss.reference import pairwise_loss_math

ISAS = ("baseline", "avx2", "avx512")
pytestmark = pytest.mark.native("pairwise_loss_isa")


def force(monkeypatch, kernel: str, isa: str) -> None:
    """Run `kernel`'s `isa` path, or skip where this CPU (or the kernel) has no such path."""
    monkeypatch.setenv("AAM_CPU_ISA", isa)
    running = getattr(native.cpu_module(), f"{kernel}_isa")()
    if running != isa:
        pytest.skip(f"this CPU has no {isa} path for {kernel} (the widest here is {running})")


def test_the_widest_path_runs_by_default(monkeypatch):
    monkeypatch.delenv("AAM_CPU_ISA", raising=False)
    cpu = native.cpu_module()
    assert cpu.attention_isa() in ISAS
    assert cpu.attention_has_avx2() == (cpu.attention_isa() in ("avx2", "avx512"))
    assert cpu.pairwise_loss_isa() == cpu.attention_isa()  # both are compiled up to AVX-512
    capped = "avx2" if cpu.attention_isa() == "avx512" else cpu.attention_isa()
    assert cpu.dropout_isa() == capped and cpu.unifrac_isa() == capped  # compiled up to AVX2
    monkeypatch.setenv("AAM_CPU_ISA", "baseline")
    assert {cpu.attention_isa(), cpu.pairwise_loss_isa(), cpu.dropout_isa(), cpu.unifrac_isa()} == {"baseline"}


# ---- attention ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("seq, holes", [(37, True), (101, False)])
def test_padded_attention_parity_per_isa(monkeypatch, isa, seq, holes):
    force(monkeypatch, "attention", isa)
    q, k, v, dout, mask = selfcheck.make_case(5, seq, h=4, d=32, seed=3, holes=holes)
    selfcheck.assert_parity("custom", torch.float32, q, k, v, dout, mask)


@pytest.mark.parametrize("isa", ISAS)
def test_varlen_attention_parity_per_isa(monkeypatch, isa):
    force(monkeypatch, "attention", isa)
    q, k, v, dout, cu = selfcheck.make_varlen_case([5, 0, 1, 13, 64, 31], h=4, d=32, seed=5)
    selfcheck.assert_varlen_parity("custom", torch.float32, q, k, v, dout, cu)


@pytest.mark.parametrize("isa", ISAS)
def test_bf16_tensors_are_read_and_written_in_place_with_fp32_results(monkeypatch, isa):
    """bf16 q/k/v/out/dout go to the kernel as they are (no fp32 copies): outputs equal the fp32 kernel's on the
    same values, rounded once to bf16, bit for bit; padded, packed (varlen) and packed-qkv forms."""
    from aam.ops.attention import custom

    force(monkeypatch, "attention", isa)
    bf = torch.bfloat16

    def same(got, fp32_result, lse: bool = False):
        """Tensors in bf16 (the log-sum-exp, last when `lse`, in fp32), equal to the fp32 results rounded."""
        for i, (g, e) in enumerate(zip(got, fp32_result, strict=True)):
            assert g.dtype == (torch.float32 if lse and i == len(got) - 1 else bf)
            assert torch.equal(g, e.to(g.dtype)), (g.dtype, (g.float() - e.float()).abs().max())

    q, k, v, dout, mask = selfcheck.make_case(5, 37, h=4, d=32, seed=3, holes=True)
    q, k, v, dout = (x.to(bf) for x in (q, k, v, dout))
    out, lse = custom._custom_fwd(q, k, v, None, mask, 0.3)
    same((out, lse), custom._custom_fwd(q.float(), k.float(), v.float(), None, mask, 0.3), lse=True)
    same(custom._custom_bwd(dout, q, k, v, out, lse, None, mask, 0.3),
         custom._custom_bwd(dout.float(), q.float(), k.float(), v.float(), out.float(), lse, None, mask, 0.3))

    q, k, v, dout, cu = selfcheck.make_varlen_case([5, 0, 1, 13, 64, 31], h=4, d=32, seed=5)
    qkv = torch.stack([q, k, v], 1).to(bf)
    dout = dout.to(bf)
    out, lse = custom._varlen_qkv_fwd(qkv, cu, 64, 0.2)
    same((out, lse), custom._varlen_qkv_fwd(qkv.float(), cu, 64, 0.2), lse=True)
    same((custom._varlen_qkv_bwd(dout, qkv, out, lse, cu, 64, 0.2),),
         (custom._varlen_qkv_bwd(dout.float(), qkv.float(), out.float(), lse, cu, 64, 0.2),))
    q, k, v = qkv.unbind(1)
    same(custom._varlen_fwd(q, k, v, cu, 64, 0.2), custom._varlen_fwd(q.float(), k.float(), v.float(), cu, 64, 0.2),
         lse=True)


# ---- pairwise UniFrac loss ----------------------------------------------------------------------------------
def _loss_case(b: int, d: int):
    g = torch.Generator().manual_seed(11)
    emb = torch.randn(b, d, generator=g, dtype=torch.float64)
    emb[7] = emb[2]  # a duplicate pair: distance 0
    target = torch.rand(b, b, generator=g, dtype=torch.float64)
    weights = (torch.rand(b, b, generator=g, dtype=torch.float64) > 0.1).double()
    return emb, (target + target.T) / 2, (weights + weights.T).clamp(max=1)


def _loss_and_grad(fn, emb, target, weights, dtype, transform):
    x = emb.to(dtype).requires_grad_(True)
    out = fn(x, target.to(dtype), transform, 4.0, None if weights is None else weights.to(dtype))
    (grad,) = torch.autograd.grad(out, x)
    return out.detach(), [grad]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("b, d", [(150, 80), (37, 24), (300, 256)])  # cache blocks of 128 rows, vector tails
def test_pairwise_loss_parity_per_isa(monkeypatch, isa, b, d):
    force(monkeypatch, "pairwise_loss", isa)
    emb, target, weights = _loss_case(b, d)

    def kernel(*args):
        return pairwise_unifrac_loss(*args, backend="custom")

    for transform, w in (("identity", None), ("tanh", weights)):
        ref = _loss_and_grad(pairwise_loss_math, emb, target, w, torch.float64, transform)
        low = _loss_and_grad(pairwise_loss_math, emb, target, w, torch.float32, transform)
        got = _loss_and_grad(kernel, emb, target, w, torch.float32, transform)
        report = parity.check_fwd_bwd(ref, low, got, torch.float32, names=["grad"], what=transform)
        assert report.ok, report
        got64 = _loss_and_grad(kernel, emb, target, w, torch.float64, transform)
        torch.testing.assert_close(got64[0], ref[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got64[1][0], ref[1][0], rtol=1e-9, atol=1e-12)


# ---- dropout --------------------------------------------------------------------------------------------------
def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def dropout_keep(n: int, seed: int, p: float, first: int = 0) -> np.ndarray:
    """The mask as csrc/cpu/dropout.cpp defines it: element i is kept when hash(seed, i) / 2 >= p * 2^31 (for mask
    indices first .. first + n - 1)."""
    i = np.arange(first, first + n, dtype=np.uint64)
    lo, hi = (i & 0xFFFFFFFF).astype(np.uint32), (i >> 32).astype(np.uint32)
    key0, key1 = np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32)
    with np.errstate(over="ignore"):
        r = _fmix32(_fmix32(lo ^ key0) + (hi ^ key1))
    threshold = np.uint32(int(np.ldexp(p, 32)))
    return (r >> np.uint32(1)).astype(np.int64) >= int(threshold >> np.uint32(1))


@pytest.mark.parametrize("isa", ISAS[:2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dropout_mask_per_isa(monkeypatch, isa, dtype):
    force(monkeypatch, "dropout", isa)
    n, seed, p = (1 << 17) + 5, (7 << 32) + 12345, 0.3  # three chunks of 2^16, a tail; a seed with high bits
    x = torch.rand(n, dtype=dtype) + 0.5
    out = _dropout_cpu(x, p, seed)
    keep = torch.from_numpy(dropout_keep(n, seed, p))
    assert torch.equal(out != 0, keep)
    assert torch.equal(out[keep], x[keep] * torch.tensor(1 / (1 - p), dtype=dtype))


@pytest.mark.parametrize("isa", ISAS[:2])
@pytest.mark.parametrize("first", [1, (1 << 16) - 3, (1 << 32) - 70_000])
def test_dropout_of_a_slice_draws_the_whole_tensors_mask(monkeypatch, isa, first):
    """With `first`, element k takes mask index first + k (a row block of a larger tensor gets that tensor's mask):
    offsets inside a 2^16 chunk, across chunks, and across the 2^32 boundary of the index's high half."""
    force(monkeypatch, "dropout", isa)
    n, seed, p = (1 << 16) + 1000, (3 << 32) + 99, 0.25
    x = torch.rand(n) + 0.5
    out = torch.empty_like(x)
    native.cpu_module().dropout(x.data_ptr(), out.data_ptr(), n, native.dtype_code(x), seed, p, first)
    assert torch.equal(out != 0, torch.from_numpy(dropout_keep(n, seed, p, first)))


# ---- UniFrac ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("isa", ISAS[:2])
@pytest.mark.parametrize("metric", ["unweighted", "weighted_normalized"])
def test_unifrac_per_isa_matches_skbio(monkeypatch, isa, metric):
    from test_unifrac import case, skbio_beta

    from aam.ops.unifrac import unifrac

    force(monkeypatch, "unifrac", isa)
    newick, table = case(6, n_tips=90, n_samples=150, n_features=80)  # several 64 x 64 stripe tiles, tails
    got = unifrac(table, newick, metric, backend="custom").data
    assert np.abs(got - skbio_beta(table, newick, metric)).max() <= 1e-9


@pytest.mark.parametrize("isa", ISAS[:2])
def test_generalized_unifrac_per_isa(monkeypatch, isa):
    from test_unifrac import case

    from aam.ops.unifrac import unifrac

    force(monkeypatch, "unifrac", isa)
    newick, table = case(8, n_tips=90, n_samples=150, n_features=80)
    got = unifrac(table, newick, "generalized", alpha=0.5, backend="custom").data
    ref = unifrac(table, newick, "generalized", alpha=0.5, backend="math").data
    assert np.abs(got - ref).max() <= 1e-9
