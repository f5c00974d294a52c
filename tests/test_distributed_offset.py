"""The DDP pairwise-loss hook applies the model's distance offset exactly as the single-process loss does."""

import numpy as np
import torch

from aam.data.distances import DistanceMatrix
from aam.training.losses import LossConfig, MultiTaskLoss
from aam.workflows.runs import pairwise_hook


def test_ddp_hook_matches_local_loss_with_offset():
    g = torch.Generator().manual_seed(0)
    ids = [f"S{i}" for i in range(9)]
    d = torch.rand(9, 9, generator=g, dtype=torch.float64)
    dm = DistanceMatrix(ids, ((d + d.T) / 2).fill_diagonal_(0).numpy())
    batch = {"sample_ids": ids, "unifrac_target": torch.as_tensor(dm.pairs(ids), dtype=torch.float32)}
    emb = torch.randn(9, 6, generator=g)
    results = []
    # the hook with world=2 is what DDP runs; without an initialised process group it scores the local batch
    for pairwise_fn in (None, pairwise_hook(2, dm)):
        loss_fn = MultiTaskLoss(LossConfig(kernels="math"), pairwise_fn=pairwise_fn)
        offset = torch.zeros(())
        x = emb.clone().requires_grad_(True)
        loss = loss_fn.unifrac(x, batch, offset)
        (grad,) = torch.autograd.grad(loss, x)
        results.append((loss.detach(), grad, offset.clone()))
    (l0, g0, o0), (l1, g1, o1) = results
    assert o0.item() != 0.0  # the running offset moved
    torch.testing.assert_close(l1, l0)
    torch.testing.assert_close(g1, g0)
    torch.testing.assert_close(o1, o0)
    assert np.isfinite(l0.item())
