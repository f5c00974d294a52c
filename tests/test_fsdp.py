"""FSDP2 and DDP on 2 CPU ranks (gloo) give the losses of one process on the same global batch: a small
SequenceEncoder in float64, pairwise UniFrac loss over every pair of the global batch, 3 AdamW steps with
gradient clipping. Each rank encodes its half of every global batch."""

from __future__ import annotations

import os
import traceback

import biom
import numpy as np
import pytest
import torch
import torch.distributed as dist
from gloo_ranks import run_ranks

from aam.data.dataset import SampleDataset, collate
from aam.data.tokenizer import tokenize
from aam.models import ModelConfig, build_model
from aam.training.distributed import global_pairwise_loss
from aam.training.optim import make_optimizer
from aam.training.sharding import is_fsdp, wrap

pytestmark = pytest.mark.distributed
WORLD, STEPS, GLOBAL_BATCH = 2, 3, 6


class Source:
    def __init__(self, ids, m):
        self.index, self.m = {s: i for i, s in enumerate(ids)}, m

    def pairs(self, sample_ids):
        idx = [self.index[s] for s in sample_ids]
        return self.m[np.ix_(idx, idx)]


def _problem():
    rng = np.random.default_rng(3)
    seqs = ["".join(rng.choice(list("ACGT"), size=rng.integers(14, 20))) for _ in range(25)]
    n = GLOBAL_BATCH * STEPS
    ids = [f"S{i:02d}" for i in range(n)]
    data = SampleDataset(biom.Table(rng.poisson(2, size=(25, n)) + 1, seqs, ids), tokenize(seqs, 20)[0], 10)
    m = rng.random((n, n))
    m = (m + m.T) / 2
    np.fill_diagonal(m, 0)
    return data, Source(ids, m)


def _model():
    torch.manual_seed(11)
    cfg = ModelConfig(kind="encoder", embedding_dim=16, asv_heads=2, asv_layers=1, sample_heads=2, sample_layers=1,
                      encoder_heads=2, encoder_layers=1, max_bp=20, token_limit=10, dropout=0.0, kernels="math")
    return build_model(cfg).double()


def _losses(model, optimizer, data, source, samples_of_step) -> list[float]:
    out = []
    for step in range(STEPS):
        batch = collate([data[i] for i in samples_of_step(step)])
        emb = model(tokens=batch["tokens"], asv_index=batch["asv_index"], offsets=batch["offsets"],
                    counts=batch["counts"].double())["embeddings"]
        loss = global_pairwise_loss(emb, batch["sample_ids"], source, backend="math")
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        out.append(float(loss.detach()))
    return out


def _worker(rank: int, port: int, mode: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        data, source = _problem()
        model = _model()
        trained = wrap(model, mode, torch.device("cpu"), WORLD, None)
        assert is_fsdp(model) == (mode == "fsdp")
        optimizer = make_optimizer(model, 1e-2)
        half = GLOBAL_BATCH // WORLD

        def mine(step):
            return range(step * GLOBAL_BATCH + rank * half, step * GLOBAL_BATCH + (rank + 1) * half)

        losses = _losses(trained, optimizer, data, source, mine)
        torch.save(losses, os.path.join(out_dir, f"{mode}{rank}.pt"))
        dist.barrier()
        del trained, model, optimizer
        dist.destroy_process_group()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_give_the_losses_of_one_process(tmp_path, mode):
    run_ranks(_worker, (mode, str(tmp_path)), WORLD, 240, f"the 2-rank {mode} run")
    data, source = _problem()
    model = _model()
    single = _losses(model, make_optimizer(model, 1e-2), data, source,
                     lambda step: range(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH))
    assert single[0] != single[-1]  # the steps train
    for rank in range(WORLD):
        ranks = torch.load(tmp_path / f"{mode}{rank}.pt")
        # the first loss is the same forward (to 1e-12); AdamW divides by sqrt(v), which turns float64 summation-order
        # differences of the reduced gradients (~1e-16) into ~1e-9 of the next losses
        np.testing.assert_allclose(ranks[0], single[0], rtol=1e-12)
        np.testing.assert_allclose(ranks, single, rtol=1e-7, atol=1e-10)
