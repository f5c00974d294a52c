"""The transformer's feed-forward network: `gelu_mlp(x, fc, fc_out, backend="auto", dropout_p=0.0)` =
fc_out(dropout(gelu(fc(x)))).

Backends:
- custom (CPU; float32, float64, bfloat16): the same products, run over blocks of rows so that each block's
  [rows, hidden] intermediate stays in the core's cache between the two GEMMs and the GELU. PyTorch runs
  fc, GELU and fc_out as three passes over a [T, 4D] tensor in memory (and its GELU backward as a fourth);
  here the GELU and its backward read cache, the bias is added by the GEMM, and only the pre-activation
  fc(x) is saved for the backward (the GELU output is recomputed there, block by block), which halves the
  FFN's activation memory (when the intermediate exceeds MIN_BLOCKED_ELEMENTS; below, the three ops run one by
  one). A torch.autograd.Function over row blocks. The row-wise results equal math's up to
  the GEMM library's blocking; the weight gradients are summed block by block. Dropout (float32/float64) is the
  CPU dropout kernel's counter-based mask, drawn per block at the block's offset in the [T, hidden] tensor:
  the very mask `aam.ops.dropout` would draw on the whole tensor with the same seed, recomputed in the backward.
- math: F.linear, F.gelu, (F.dropout,) F.linear (every device and dtype; GPUs, where the row blocks would be
  many small launches, and torch.compile, which fuses the epilogues itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aam import native
from aam.ops import parity, registry
from aam.ops.dropout import draw_seed, dropout
from aam.ops.registry import KernelRequest

OP = "gelu_mlp"
CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
DROPOUT_DTYPES = (torch.float32, torch.float64)
BLOCK_ELEMENTS = 1 << 19  # a row block's [rows, hidden] intermediate: 2 MiB in float32
# Below 4 blocks' worth (8 MiB in float32) the whole intermediate stays in cache anyway and the three ops one by one
# are as fast or faster (2 blocks at D 64: 0.8x; 4: 1.2x; 8 at D 128: 1.1-1.2x, fwd+bwd): they run instead.
MIN_BLOCKED_ELEMENTS = 4 * BLOCK_ELEMENTS


def block_rows(hidden: int) -> int:
    """Rows per block: BLOCK_ELEMENTS / hidden (1,024 rows at hidden 512)."""
    return max(16, BLOCK_ELEMENTS // max(hidden, 1))


def _blocks(rows: int, hidden: int) -> list[tuple[int, int]]:
    step = block_rows(hidden)
    return [(s, min(s + step, rows)) for s in range(0, rows, step)]


def _drop_(block: torch.Tensor, p: float, seed: int, first: int) -> None:
    """Dropout in place on a contiguous row block whose first element is element `first` of the whole tensor."""
    if p > 0.0:
        native.cpu_module().dropout(block.data_ptr(), block.data_ptr(), block.numel(), native.dtype_code(block), seed,
                                    p, first)


def _forward_blocks(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                    p: float, seed: int, keep_pre: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """y = dropout(gelu(x @ w1^T + b1)) @ w2^T + b2 block by block; also returns the pre-activation
    [rows, hidden] when `keep_pre` (for the backward)."""
    rows, hidden = x.shape[0], w1.shape[0]
    y = x.new_empty(rows, w2.shape[0])
    pre = x.new_empty(rows, hidden) if keep_pre else None
    step = min(block_rows(hidden), max(rows, 1))
    scratch_pre = None if keep_pre else x.new_empty(step, hidden)
    act = x.new_empty(step, hidden)
    for s, e in _blocks(rows, hidden):
        h = pre[s:e] if pre is not None else scratch_pre[: e - s]
        torch.addmm(b1, x[s:e], w1.t(), out=h)
        a = act[: e - s]
        torch.ops.aten.gelu.out(h, out=a)
        _drop_(a, p, seed, s * hidden)
        torch.addmm(b2, a, w2.t(), out=y[s:e])
    return y, pre


class _BlockedGeluMLP(torch.autograd.Function):
    """Autograd over `_forward_blocks`; saves x and the pre-activation, recomputes the GELU output (and its
    dropout mask, from the seed)."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, p, seed):
        y, pre = _forward_blocks(x, w1, b1, w2, b2, p, seed, keep_pre=True)
        ctx.save_for_backward(x, w1, w2, pre)
        ctx.p, ctx.seed = p, seed
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w1, w2, pre = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        dy = dy.contiguous()
        rows, hidden = pre.shape
        # parameter gradients are summed over blocks in float32 at least (one rounding to bf16, as math's)
        acc = torch.promote_types(pre.dtype, torch.float32)
        dx = torch.empty_like(x) if need_x else None
        dw1 = w1.new_zeros(w1.shape, dtype=acc) if need_w1 else None
        dw2 = w2.new_zeros(w2.shape, dtype=acc) if need_w2 else None
        db1 = w1.new_zeros(hidden, dtype=acc) if need_b1 else None
        step = min(block_rows(hidden), max(rows, 1))
        act, dact, dpre = (pre.new_empty(step, hidden) for _ in range(3))
        for s, e in _blocks(rows, hidden):
            h, g = pre[s:e], dy[s:e]
            if need_w2:  # dW2 += dy^T dropout(gelu(h))
                a = act[: e - s]
                torch.ops.aten.gelu.out(h, out=a)
                _drop_(a, ctx.p, ctx.seed, s * hidden)
                _accumulate(dw2, g.t(), a)
            if not (need_x or need_w1 or need_b1):
                continue
            da = dact[: e - s]
            torch.mm(g, w2, out=da)
            _drop_(da, ctx.p, ctx.seed, s * hidden)  # the same mask and scale on the gradient
            dh = dpre[: e - s]
            torch.ops.aten.gelu_backward.grad_input(da, h, grad_input=dh)
            if need_w1:
                _accumulate(dw1, dh.t(), x[s:e])
            if need_b1:
                db1 += dh.sum(0, dtype=acc)
            if need_x:
                torch.mm(dh, w1, out=dx[s:e])
        db2 = dy.sum(0, dtype=acc).to(dy.dtype) if need_b2 else None
        cast = [None if t is None else t.to(pre.dtype) for t in (dw1, db1, dw2)]
        return dx, cast[0], cast[1], cast[2], db2, None, None


def _accumulate(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """total += a @ b, in place (a @ b rounded once to the inputs' dtype when total is wider)."""
    if total.dtype == a.dtype:
        total.addmm_(a, b)
    else:
        total += a @ b


def _custom(x: torch.Tensor, fc: nn.Linear, fc_out: nn.Linear, p: float) -> torch.Tensor:
    w1, b1, w2, b2 = fc.weight, fc.bias, fc_out.weight, fc_out.bias
    if b1 is None or b2 is None or x.numel() // max(x.shape[-1], 1) * fc.out_features < MIN_BLOCKED_ELEMENTS:
        return fc_out(dropout(F.gelu(fc(x)), p, True))  # small: one by one, with the same dropout mask
    seed = draw_seed() if p > 0 else 0  # the draw aam.ops.dropout makes: the same mask from the same state
    if torch.is_autocast_enabled("cpu"):  # cast as autocast would cast F.linear's inputs, tracked by autograd
        dtype = torch.get_autocast_dtype("cpu")
        x, w1, b1, w2, b2 = (t.to(dtype) for t in (x, w1, b1, w2, b2))
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    with torch.autocast("cpu", enabled=False):
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x2, w1, b1, w2, b2)):
            y = _BlockedGeluMLP.apply(x2, w1, b1, w2, b2, p, seed)
        else:  # inference: nothing saved, one block of scratch
            y, _ = _forward_blocks(x2, w1, b1, w2, b2, p, seed, keep_pre=False)
    return y.view(*lead, y.shape[-1])


def _math(x: torch.Tensor, fc: nn.Linear, fc_out: nn.Linear, p: float = 0.0) -> torch.Tensor:
    a = F.gelu(fc(x))
    return fc_out(F.dropout(a, p, True) if p > 0 else a)


def _check_custom(req: KernelRequest) -> str | None:
    if req.device.type != "cpu":
        return "the row-blocked MLP is for CPU caches (on GPUs: math)"
    if req.dtype not in CPU_DTYPES:
        return f"dtype {req.dtype} not supported (float32/float64/bfloat16)"
    if req.dropout_p > 0:
        if req.dtype not in DROPOUT_DTYPES:
            return f"dropout inside the blocks is the CPU dropout kernel's (float32/float64), not {req.dtype}"
        _, reason = native.module_with(req.device, "dropout")
        return reason
    return None


registry.register(OP, "math", _math, lambda req: None, priority=0)
registry.register(OP, "custom", _custom, _check_custom, priority=20)


def gelu_mlp(x: torch.Tensor, fc: nn.Linear, fc_out: nn.Linear, backend: str = "auto",
             dropout_p: float = 0.0) -> torch.Tensor:
    """fc_out(dropout(gelu(fc(x)))) for x [..., D] (exact, erf GELU); dropout with probability `dropout_p` (pass
    0 outside training); `backend` is a `--kernels` choice."""
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {dropout_p}")
    if torch.compiler.is_compiling():
        return _math(x, fc, fc_out, dropout_p)
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    req = KernelRequest(x.device, dtype, dropout_p=dropout_p)
    name = registry.select_name(OP, registry.resolve_name(OP, backend), req)
    return registry.get(OP, name).fn(x, fc, fc_out, dropout_p)


def self_check_gelu_mlp(backend: str, device: torch.device | str) -> dict:
    """`aam kernels` check: 4,200 rows (four full row blocks and a partial one at hidden 512, above the size where
    the blocks start), D 128, float32: the output and the gradients of x and all four parameters against float64
    math (DESIGN.md's parity rule)."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 1400, 128, generator=g, dtype=torch.float64)
    fc0, out0 = nn.Linear(128, 512).double(), nn.Linear(512, 128).double()
    with torch.no_grad():
        for p in (*fc0.parameters(), *out0.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.1)
    dy = torch.randn(3, 1400, 128, generator=g, dtype=torch.float64)

    def result(fn, dtype):
        fc, out = nn.Linear(128, 512), nn.Linear(512, 128)
        fc.load_state_dict(fc0.state_dict())
        out.load_state_dict(out0.state_dict())
        fc, out = fc.to(device, dtype), out.to(device, dtype)
        x = x0.to(device, dtype).requires_grad_(True)
        y = fn(x, fc, out)
        params = [x, fc.weight, fc.bias, out.weight, out.bias]
        grads = torch.autograd.grad(y, params, dy.to(device, dtype))
        return y.detach(), [t.detach() for t in grads]

    report = parity.check_fwd_bwd(result(_math, torch.float64), result(_math, torch.float32),
                                  result(lambda *a: gelu_mlp(*a, backend=backend), torch.float32), torch.float32,
                                  names=["x", "fc.weight", "fc.bias", "fc_out.weight", "fc_out.bias"])
    fwd, bwd = report.worst("forward"), report.worst("backward")
    detail = (f"float32: max err fwd {fwd.err:.2e} (tol {fwd.bound:.1e}), bwd {bwd.err:.2e} (tol {bwd.bound:.1e})"
              + (", NaN" if report.nan else ""))
    return {"ok": report.ok, "max_err_fwd": fwd.err, "max_err_bwd": bwd.err, "tol_fwd": fwd.bound,
            "tol_bwd": bwd.bound, "nan": report.nan, "detail": detail}


registry.register_diagnostic(OP, self_check_gelu_mlp)
