"""The transformer's feed-forward network fwd+bwd (`aam.ops.mlp.gelu_mlp`), every backend that runs here, at the
ASV encoder's shape in a pretraining step: T = 29,000 nucleotide tokens (about 200 reads of 145 bp), D 128, hidden
512; float32 and bf16 autocast, and float32 with dropout 0.1 between the Linears (fine-tuning) against the three ops
one by one with aam's CPU dropout kernel (what a Block ran before). Each benchmark also records what autograd saves for the backward (the distinct
tensors' bytes, the input x included): the activation memory the op costs a training step.

    make dev && PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_mlp.py --benchmark-enable -q

Compare the means of one run (the machine is shared and noisy). Parity is in tests/test_mlp.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aam.ops import registry
from aam.ops.dropout import dropout
from aam.ops.mlp import OP, gelu_mlp

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
T, D, HIDDEN = 29_000, 128, 512


def _saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves for the backward while `fn` runs."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _time(benchmark, forward_of) -> None:
    """Time fwd+bwd of `forward_of(x, fc, fc_out)` on the module's shape; record what autograd saves."""
    torch.manual_seed(0)
    fc, fc_out = nn.Linear(D, HIDDEN).to(DEVICE), nn.Linear(HIDDEN, D).to(DEVICE)
    x = torch.randn(T, D, device=DEVICE, requires_grad=True)
    g = torch.randn(T, D, device=DEVICE)

    def forward():
        return forward_of(x, fc, fc_out)

    def run():
        y = forward()
        grads = torch.autograd.grad(y, [x, *fc.parameters(), *fc_out.parameters()], g.to(y.dtype))
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return grads

    run()
    benchmark.extra_info["saved_for_backward_mb"] = _saved_bytes(forward) / 2**20
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["custom", "math"])
def test_gelu_mlp_fwd_bwd(benchmark, backend, precision):
    amp = precision == "bf16"
    dtype = torch.bfloat16 if amp else torch.float32
    reason = dict(registry.status(OP, registry.KernelRequest(DEVICE, dtype))).get(backend)
    if reason:
        pytest.skip(f"{backend} cannot run here: {reason}")

    def forward(x, fc, fc_out):
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=amp):
            return gelu_mlp(x, fc, fc_out, backend)

    _time(benchmark, forward)


@pytest.mark.parametrize("path", ["blocked", "unfused"])
def test_gelu_mlp_dropout_fwd_bwd(benchmark, path):
    p = 0.1
    reason = dict(registry.status(OP, registry.KernelRequest(DEVICE, torch.float32, dropout_p=p))).get("custom")
    if reason:
        pytest.skip(f"the blocked MLP cannot run here: {reason}")

    def forward(x, fc, fc_out):
        if path == "blocked":
            return gelu_mlp(x, fc, fc_out, "custom", dropout_p=p)
        return fc_out(dropout(F.gelu(fc(x)), p, True))

    _time(benchmark, forward)
