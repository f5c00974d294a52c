"""Global pairs across ranks: 2 CPU processes (gloo) give the loss and gradients of one process.

Each rank encodes its share of the global batch with a DDP-wrapped linear encoder; the loss is the
pairwise UniFrac loss over every pair of the global batch. The loss on each rank, the DDP-averaged
parameter gradients, and (divided by the world size, as DDP does) the embedding gradients must equal
those of one process on the whole batch.
"""

from __future__ import annotations

import os
import traceback

import numpy as np
import pytest
import torch
import torch.distributed as dist
from gloo_ranks import run_ranks

from aam.training.distributed import gather_with_grad, global_pairwise_loss, global_targets

WORLD = 2
B_LOCAL = (5, 4)  # ranks may hold different numbers of samples
D_IN, D_EMB = 6, 8


class MatrixSource:
    """A distance source over a symmetric matrix, matched by sample ID."""

    def __init__(self, ids: list[str], matrix: np.ndarray) -> None:
        self.ids = ids
        self._index = {sid: k for k, sid in enumerate(ids)}
        self._m = matrix

    def pairs(self, sample_ids: list[str]) -> np.ndarray:
        idx = [self._index[s] for s in sample_ids]
        return self._m[np.ix_(idx, idx)]


def _problem():
    g = torch.Generator().manual_seed(7)
    n = sum(B_LOCAL)
    x = torch.randn(n, D_IN, generator=g, dtype=torch.float64)
    ids = [f"S{k:03d}" for k in range(n)]
    m = torch.rand(n + 3, n + 3, generator=g, dtype=torch.float64).numpy()
    m = (m + m.T) / 2
    np.fill_diagonal(m, 0.0)
    # the source holds more samples than the batch, in another order
    order = list(reversed([f"S{k:03d}" for k in range(n + 3)]))
    source = MatrixSource(order, m)
    enc = torch.nn.Linear(D_IN, D_EMB).double()
    torch.nn.init.normal_(enc.weight, generator=g)
    torch.nn.init.normal_(enc.bias, generator=g)
    return x, ids, source, enc.state_dict()


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        x, ids, source, state = _problem()
        start = sum(B_LOCAL[:rank])
        sl = slice(start, start + B_LOCAL[rank])
        enc = torch.nn.Linear(D_IN, D_EMB).double()
        enc.load_state_dict(state)
        model = torch.nn.parallel.DistributedDataParallel(enc)
        emb = model(x[sl])
        emb.retain_grad()
        loss = global_pairwise_loss(emb, ids[sl], source, transform="tanh", scale=3.0)
        loss.backward()
        gathered = gather_with_grad(emb.detach())
        torch.save({"loss": loss.detach(), "emb_grad": emb.grad, "w_grad": enc.weight.grad,
                    "b_grad": enc.bias.grad, "gathered": gathered}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    # Leave without interpreter teardown: freeing the DDP reducer's gloo process group can deadlock on the GIL
    # against gloo's own worker thread (seen once in ~5 runs). The results are on disk already.
    os._exit(0)


@pytest.mark.distributed
def test_two_ranks_match_one_process(tmp_path):
    run_ranks(_worker, (str(tmp_path),), WORLD, 180, "the 2-rank gloo run")
    x, ids, source, state = _problem()
    enc = torch.nn.Linear(D_IN, D_EMB).double()
    enc.load_state_dict(state)
    emb = enc(x)
    emb.retain_grad()
    loss = global_pairwise_loss(emb, ids, source, transform="tanh", scale=3.0)  # no process group
    loss.backward()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for r, res in enumerate(results):
        torch.testing.assert_close(res["loss"], loss.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(res["gathered"], emb.detach(), rtol=0, atol=0)
        torch.testing.assert_close(res["w_grad"], enc.weight.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res["b_grad"], enc.bias.grad, rtol=1e-10, atol=1e-12)
        start = sum(B_LOCAL[:r])
        own = emb.grad[start : start + B_LOCAL[r]]
        torch.testing.assert_close(res["emb_grad"] / WORLD, own, rtol=1e-10, atol=1e-12)


def test_global_targets_by_id_and_padding_duplicates():
    _, ids, source, _ = _problem()
    batch = [ids[3], ids[0], ids[3], ids[1]]  # DistributedSampler-style repeat of ids[3]
    target, weights = global_targets(batch, source, torch.device("cpu"), torch.float64)
    np.testing.assert_array_equal(target.numpy(), source.pairs(batch) * weights.numpy())
    assert weights[0, 2] == 0 and weights[2, 0] == 0 and weights[0, 1] == 1
    target, weights = global_targets(ids[:4], source, torch.device("cpu"), torch.float64)
    assert weights is None


def test_without_process_group_is_the_local_loss():
    x, ids, source, state = _problem()
    emb = torch.randn(4, 3, dtype=torch.float64)
    from aam.ops import pairwise_unifrac_loss

    want = pairwise_unifrac_loss(emb, torch.as_tensor(source.pairs(ids[:4])))
    assert torch.equal(global_pairwise_loss(emb, ids[:4], source), want)
    with pytest.raises(ValueError, match="sample IDs"):
        global_pairwise_loss(emb, ids[:3], source)
