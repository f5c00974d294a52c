"""masked_attention on the CPU backends (custom C++, sdpa, math) against float64 math."""

from __future__ import annotations

import math

import pytest
import torch

from aam.errors import BackendUnavailable
from aam.ops import parity, registry
from aam.ops.attention import (
    OP,
    custom,
    masked_attention,
    masked_attention_varlen,
    masked_attention_varlen_qkv,
    sdpa,
    selfcheck,
)
from aam.ops.attention.reference import varlen_math
from aam.ops.attention.selfcheck import assert_parity, make_case
from aam.ops.registry import KernelRequest

needs_cpu_kernel = pytest.mark.native("attention_forward")
CPU_BACKENDS = [pytest.param("custom", marks=needs_cpu_kernel), "sdpa", "math"]
SHAPES = [(1, 1), (3, 1), (3, 7), (3, 149), (3, 150), (3, 151), (1, 151), (127, 7), (127, 150)]


@pytest.fixture(autouse=True)
def _poison(poison_outputs):
    poison_outputs(custom)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny shapes: torch's own thread pool only adds contention on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n,seq", SHAPES)
def test_parity_fp32(backend, n, seq):
    q, k, v, dout, mask = make_case(n, seq, seed=n * 1000 + seq)
    assert_parity(backend, torch.float32, q, k, v, dout, mask)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_head_dims_and_mask_holes(backend, d):
    q, k, v, dout, mask = make_case(5, 37, h=3, d=d, seed=d, holes=True)
    assert_parity(backend, torch.float32, q, k, v, dout, mask)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_key_lengths_equal_mask(backend):
    lengths = torch.tensor([0, 1, 9, 20, 20])
    q, k, v, dout, mask = make_case(5, 20, lengths=lengths)
    assert_parity(backend, torch.float32, q, k, v, dout, mask, lengths=lengths)


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_custom_half_types_upcast_on_cpu(dtype):
    q, k, v, dout, mask = make_case(3, 33, seed=7)
    assert_parity("custom", dtype, q, k, v, dout, mask)


@needs_cpu_kernel
def test_custom_strided_inputs():
    """[N, L, H, D] projections viewed as [N, H, L, D] (non-contiguous) give the same result."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 19, 2, 16, generator=g)
    q, k, v = (x.transpose(1, 2) * s for s in (1.0, 0.5, 2.0))
    mask = torch.arange(19)[None] >= torch.tensor([19, 5, 0, 1])[:, None]
    out = masked_attention(q, k, v, key_padding_mask=mask, backend="custom")
    ref = masked_attention(q.contiguous(), k.contiguous(), v.contiguous(), key_padding_mask=mask, backend="math")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@needs_cpu_kernel
def test_gradcheck_float64_custom():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(3, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.arange(5)[None] >= torch.tensor([5, 0, 1])[:, None]
    torch.autograd.gradcheck(lambda a, b, c: masked_attention(a, b, c, key_padding_mask=mask, backend="custom"),
                             (q, k, v))
    lengths = torch.tensor([2, 5, 0])
    torch.autograd.gradcheck(lambda a, b, c: masked_attention(a, b, c, key_lengths=lengths, backend="custom"),
                             (q, k, v))


def test_gradcheck_float64_sdpa_and_math():
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.arange(4)[None] >= torch.tensor([4, 0, 1])[:, None]
    for backend in ("sdpa", "math"):
        torch.autograd.gradcheck(lambda a, b, c, be=backend: masked_attention(a, b, c, key_padding_mask=mask,
                                                                              backend=be), (q, k, v))


@needs_cpu_kernel
def test_opcheck_custom_ops():
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(3, 2, 7, 16, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.arange(7)[None] >= torch.tensor([7, 0, 3])[:, None]
    torch.library.opcheck(torch.ops.aam.attention_fwd.default, (q, k, v, None, mask, 0.25))
    torch.library.opcheck(torch.ops.aam.attention_fwd.default, (q, k, v, torch.tensor([7, 0, 3]), None, 0.25))
    t = torch.randn(9, 2, 16, generator=g, requires_grad=True)
    cu = torch.tensor([0, 4, 4, 9])
    torch.library.opcheck(torch.ops.aam.attention_varlen_fwd.default, (t, t.detach() * 0.5, t.detach(), cu, 5, 0.3))
    qkv = torch.randn(9, 3, 2, 16, generator=g, requires_grad=True)
    torch.library.opcheck(torch.ops.aam.attention_varlen_qkv_fwd.default, (qkv, cu, 5, 0.3))


@pytest.mark.parametrize("backend", [pytest.param("custom", marks=needs_cpu_kernel), "math"])
def test_varlen_matches_padded(backend):
    g = torch.Generator().manual_seed(11)
    lengths = torch.tensor([5, 0, 1, 13, 7])
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    total, h, d = int(lengths.sum()), 2, 16
    q, k, v = (torch.randn(total, h, d, generator=g, requires_grad=True) for _ in range(3))
    out = masked_attention_varlen(q, k, v, cu, 13, backend=backend)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_in = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ref = varlen_math(*ref_in, cu, 13, 1 / math.sqrt(d), 0.0)
    ref_grads = torch.autograd.grad(ref, ref_in, dout.double())
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
    for gr, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(gr.double(), rg, rtol=0, atol=1e-4)


@pytest.mark.parametrize("backend", [pytest.param("custom", marks=needs_cpu_kernel), "math"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_varlen_qkv_packed_matches_unpacked(backend, dtype):
    """q, k, v packed in one [T, 3, H, Dh] tensor (the custom kernel reads them in place and writes one dqkv):
    the same output and gradients as the unpacked op, bit for bit, and the float64 reference within the
    parity rule."""
    g = torch.Generator().manual_seed(12)
    lengths = torch.tensor([5, 0, 1, 13, 7])
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    qkv = torch.randn(int(lengths.sum()), 3, 2, 16, generator=g).to(dtype).requires_grad_(True)
    out = masked_attention_varlen_qkv(qkv, cu, 13, backend=backend)
    dout = torch.randn(out.shape, generator=g).to(dtype)
    (dqkv,) = torch.autograd.grad(out, qkv, dout)
    assert dqkv.shape == qkv.shape and dqkv.dtype == dtype
    parts = [t.detach().clone().requires_grad_(True) for t in qkv.detach().unbind(1)]
    out2 = masked_attention_varlen(*parts, cu, 13, backend=backend)
    grads2 = torch.autograd.grad(out2, parts, dout)
    assert torch.equal(out, out2) and torch.equal(dqkv, torch.stack(grads2, 1))
    results = []
    for dt in (torch.float64, dtype):  # the float64 reference and math in the same precision
        x = qkv.detach().to(dt).requires_grad_(True)
        y = varlen_math(*x.unbind(1), cu, 13, 0.25, 0.0)
        results.append((y, torch.autograd.grad(y, x, dout.to(dt))[0]))
    (ref, ref_grad), (low, low_grad) = results
    parity.assert_parity(ref, low, out, "forward", dtype)
    parity.assert_parity(ref_grad, low_grad, dqkv, "backward", dtype)


def test_explicit_backend_errors_and_dropout():
    q = torch.randn(2, 1, 3, 16)
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET"):
        masked_attention(q, q, q, backend="triton")
    with pytest.raises(BackendUnavailable, match="no dropout"):
        masked_attention(q, q, q, dropout_p=0.1, backend="custom")
    with pytest.raises(BackendUnavailable, match="unknown kernel backend"):
        masked_attention(q, q, q, backend="cuda")
    # auto with dropout falls back to a backend that implements it
    out = masked_attention(q, q, q, dropout_p=0.5, backend="auto")
    assert out.shape == q.shape
    with pytest.raises(ValueError, match="key_padding_mask must be"):
        masked_attention(q, q, q, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))


@needs_cpu_kernel
def test_auto_picks_custom_on_cpu_for_padded_input():
    def pick(**kw):
        return registry.select_name(OP, "auto", KernelRequest("cpu", torch.float32, head_dim=32, **kw))

    assert pick(padded=True) == "custom"
    assert pick(padded=True, dropout_p=0.1) == "sdpa"
    assert pick(padded=False, long_rows=True) == "sdpa"
    assert pick(padded=True, long_rows=True) == "custom"


def test_sdpa_fully_padded_rows_have_no_nan():
    q = torch.randn(2, 2, 5, 16, requires_grad=True)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, :2] = False
    out = masked_attention(q, q, q, key_padding_mask=mask, backend="sdpa")
    (grad,) = torch.autograd.grad(out.sum(), q)
    assert (out[1] == 0).all() and not torch.isnan(grad).any()


class _Block(torch.nn.Module):
    """Pre-LN transformer block using masked_attention."""

    def __init__(self, dim: int, heads: int, backend: str):
        super().__init__()
        self.heads, self.backend = heads, backend
        self.ln1, self.ln2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.ff = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(), torch.nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, seq, dim = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(n, seq, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        att = masked_attention(q, k, v, key_padding_mask=mask, backend=self.backend)
        x = x + self.proj(att.transpose(1, 2).reshape(n, seq, dim))
        return x + self.ff(self.ln2(x))


def _train(backend: str, steps: int = 30) -> list[float]:
    torch.manual_seed(123)
    dim, heads = 32, 2
    blocks = torch.nn.ModuleList([_Block(dim, heads, backend) for _ in range(2)])
    head = torch.nn.Linear(dim, 1)
    params = list(blocks.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(16, 23, dim, generator=g)
    lengths = torch.randint(0, 24, (16,), generator=g)
    mask = torch.arange(23)[None] >= lengths[:, None]
    y = torch.randn(16, generator=g)
    losses = []
    for _ in range(steps):
        x = x0
        for blk in blocks:
            x = blk(x, mask)
        valid = (~mask).float()[..., None]
        pooled = (x * valid).sum(1) / valid.sum(1).clamp_min(1)
        loss = ((head(pooled).squeeze(-1) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@needs_cpu_kernel
def test_mini_model_custom_matches_math():
    custom, ref = _train("custom"), _train("math")
    assert ref[-1] < ref[0]
    torch.testing.assert_close(torch.tensor(custom), torch.tensor(ref), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("backend", [pytest.param("custom", marks=needs_cpu_kernel), "sdpa", "auto"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    block = _Block(32, 2, backend)
    x = torch.randn(4, 11, 32, requires_grad=True)
    mask = torch.arange(11)[None] >= torch.tensor([11, 0, 1, 6])[:, None]
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x, mask)
    (gx,) = torch.autograd.grad(out.sum(), x)
    ref = block(x, mask)
    (gr,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, gr)


@pytest.mark.parametrize("backend", [pytest.param("custom", marks=needs_cpu_kernel), "auto"])
def test_torch_compile_dynamic_lengths(backend):
    """Recompiles with a symbolic sequence length must not break the graph at dispatch."""
    torch._dynamo.reset()

    def f(q, mask):
        return masked_attention(q, q, q, key_padding_mask=mask, backend=backend)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for seq in (11, 13, 17):
        q = torch.randn(3, 2, seq, 16, requires_grad=True)
        mask = torch.arange(seq)[None] >= torch.tensor([seq, 0, 2])[:, None]
        out = compiled(q, mask)
        (g,) = torch.autograd.grad(out.sum(), q)
        (gr,) = torch.autograd.grad(f(q, mask).sum(), q)
        torch.testing.assert_close(out, f(q, mask))
        torch.testing.assert_close(g, gr)


@pytest.mark.slow
@needs_cpu_kernel
def test_torch_compile_inductor_custom():
    torch._dynamo.reset()
    block = _Block(32, 2, "custom")
    x = torch.randn(4, 11, 32)
    mask = torch.arange(11)[None] >= torch.tensor([11, 0, 1, 6])[:, None]
    out = torch.compile(block, fullgraph=True)(x, mask)
    torch.testing.assert_close(out, block(x, mask))


def test_self_check_catches_wrong_masked_results_and_nan():
    """What `auto` relies on before trusting SDPA on ROCm: a mask-ignoring or NaN-leaking kernel fails."""
    cpu = torch.device("cpu")

    def ignores_mask(q, k, v, mask):
        return sdpa.attention(q, k, v, None, None, 1 / math.sqrt(q.shape[-1]), 0.0)

    def nan_rows(q, k, v, mask):  # what several backends return for rows without a valid key
        out = sdpa.attention(q, k, v, mask, None, 1 / math.sqrt(q.shape[-1]), 0.0)
        return out.masked_fill(mask.all(-1)[:, None, None, None], float("nan"))

    bad = selfcheck.check_run(ignores_mask, cpu, torch.float32)
    assert not bad["ok"] and bad["max_err_fwd"] > 1e-2
    leaky = selfcheck.check_run(nan_rows, cpu, torch.float32)
    assert not leaky["ok"] and leaky["nan"]
    good = selfcheck.check_run(lambda q, k, v, m: sdpa.attention(q, k, v, m, None, 1 / math.sqrt(q.shape[-1]), 0.0),
                               cpu, torch.float32)
    assert good["ok"], good["detail"]
