"""Dropout fwd+bwd, every backend that runs here, at the size of one FFN activation of a pretraining step
(2^24 floats, about a 4D-wide FFN activation of 320 reads x 101 tokens at D = 128), p = 0.1.

    make dev && PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_dropout.py --benchmark-enable -q

Compare the means of one run (the machine is shared and noisy). Parity (rate, scaling, gradient) is in
tests/test_dropout.py.
"""

from __future__ import annotations

import pytest
import torch

from aam.ops import registry
from aam.ops.dropout import dropout

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
N, P = 1 << 24, 0.1


@pytest.mark.parametrize("backend", ["custom", "math"])
def test_dropout_fwd_bwd(benchmark, backend):
    reason = dict(registry.status("dropout", registry.KernelRequest(DEVICE, torch.float32))).get(backend)
    if reason:
        pytest.skip(f"{backend} cannot run here: {reason}")
    x = torch.randn(N, device=DEVICE, requires_grad=True)
    g = torch.randn(N, device=DEVICE)

    def run():
        (grad,) = torch.autograd.grad(dropout(x, P, True, backend), x, g)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return grad

    run()
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
