"""Transformer stack fwd+bwd, packed (valid tokens only, varlen attention) vs padded, at the model's shapes.

A Transformer packs the valid tokens of a padded batch when a varlen kernel can run; this measures what
that buys: Linear/FFN/LayerNorm work on padding disappears, and attention runs per sequence.

Cases (D=128, 4 heads, 4 layers):
- sample level, batch of 8 samples whose ASV counts follow the IBD table (48-390 per sample, median 120);
- nucleotide level, 256 reads of 141-151 tokens (3% padding: reads of one length, nothing to gain);
- nucleotide level, 256 reads of 60-151 tokens (30% padding).

    make dev && PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_packing.py --benchmark-enable -q

Compare the `packed` and `padded` means of one case from one run (the machine is shared and noisy).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aam.models.transformer import Transformer

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DIM, HEADS, LAYERS = 128, 4, 4
IBD_ASVS_PER_SAMPLE = [48, 70, 90, 100, 110, 120, 130, 153, 170, 192, 250, 390]  # quantiles of the IBD table


def _lengths(case: str) -> list[int]:
    rng = np.random.default_rng(0)
    if case == "sample-ibd":
        return [int(x) for x in rng.choice(IBD_ASVS_PER_SAMPLE, 8)]
    if case == "nucleotide-3pct":
        return [int(x) for x in rng.integers(141, 152, 256)]
    return [int(x) for x in rng.integers(60, 152, 256)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(DIM, HEADS, LAYERS, dropout=0.0).to(DEVICE)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("case", ["sample-ibd", "nucleotide-3pct", "nucleotide-30pct"])
def test_transformer_fwd_bwd(benchmark, model, case, packed):
    lengths = _lengths(case)
    length = max(lengths)
    pad = (torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]).to(DEVICE)
    x = torch.randn(len(lengths), length, DIM, device=DEVICE, requires_grad=True)
    model.packed = packed
    if packed and model._packing(x, pad) is None:
        pytest.skip("no varlen attention kernel runs here (build aam._C: make dev)")

    def run():
        model(x, pad).sum().backward()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    run()
    benchmark.extra_info.update({"padding_fraction": float(pad.float().mean()), "tokens": sum(lengths)})
    benchmark.pedantic(run, rounds=3 if DEVICE.type == "cpu" else 20, iterations=1, warmup_rounds=0)
