"""Data-layer speed: per-batch item selection + collate, tokenizer, synthetic generation.

Run: PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_data.py --benchmark-enable
Sizes: AAM_BENCH_DATA_SAMPLES (5000), AAM_BENCH_DATA_FEATURES (2000), AAM_BENCH_SYN_SAMPLES (10000).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from aam.data.dataset import SampleDataset, collate
from aam.data.distances import DistanceMatrix
from aam.data.synthetic import make_dataset
from aam.data.tokenizer import tokenize

N_SAMPLES = int(os.environ.get("AAM_BENCH_DATA_SAMPLES", 5000))
N_FEATURES = int(os.environ.get("AAM_BENCH_DATA_FEATURES", 2000))
N_SYN = int(os.environ.get("AAM_BENCH_SYN_SAMPLES", 10000))
BATCH = 32
TOKEN_LIMIT = 256


@pytest.fixture(scope="module")
def synthetic():
    return make_dataset(N_SAMPLES, n_features=N_FEATURES, seed=0, richness=400)


@pytest.fixture(scope="module")
def dataset(synthetic):
    tokens, _, _ = tokenize(synthetic.sequences, max_bp=150)
    return SampleDataset(synthetic.table, tokens, token_limit=TOKEN_LIMIT)


@pytest.fixture(scope="module")
def distances(dataset):
    n = len(dataset)
    rng = np.random.default_rng(0)
    x = rng.random((n, 8))
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    return DistanceMatrix(dataset.sample_ids, d)


@pytest.mark.parametrize("mode", ["abundance", "random"])
def test_bench_getitem_collate(benchmark, dataset, distances, mode) -> None:
    """One training batch: 32 x __getitem__ (token_limit 256) + collate with distance pairs."""
    dataset.asv_selection = mode
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(dataset), BATCH, replace=False) for _ in range(64)]
    state = {"k": 0}

    def step():
        idx = batches[state["k"] % len(batches)]
        state["k"] += 1
        return collate([dataset[int(i)] for i in idx], distances=distances)

    batch = benchmark(step)
    dataset.asv_selection = "abundance"
    assert batch["offsets"].numel() == BATCH + 1
    assert int((batch["offsets"][1:] - batch["offsets"][:-1]).max()) <= TOKEN_LIMIT


def test_bench_collate_only(benchmark, dataset, distances) -> None:
    items = [dataset[i] for i in range(BATCH)]
    batch = benchmark(collate, items, distances)
    assert batch["tokens"].shape[0] < batch["asv_index"].numel()


def test_bench_tokenize_100k(benchmark) -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(100_000, 150), dtype=np.uint8)
    seqs = np.frombuffer(b"ACGT", dtype=np.uint8)[codes].view("S150").ravel().astype(str).tolist()
    tokens, _, _ = benchmark(tokenize, seqs, 150)
    assert tokens.shape == (100_000, 151)


def test_bench_synthetic_generation(benchmark) -> None:
    ds = benchmark.pedantic(make_dataset, args=(N_SYN,), kwargs={"n_features": N_FEATURES, "seed": 0}, rounds=2, iterations=1)
    assert ds.table.shape[1] == N_SYN
