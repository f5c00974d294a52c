"""`aam kernels` self-check of the pairwise UniFrac loss: passes on real backends, fails on a wrong one."""

import torch

from aam.ops import pairwise_loss, registry
from aam.ops.registry import KernelRequest


def test_self_check_passes_on_cpu_backends():
    for name, reason in registry.status(pairwise_loss.OP, KernelRequest("cpu", torch.float32, batch=37, dim=24)):
        if reason is None:
            res = pairwise_loss.self_check_pairwise_unifrac_loss(name, "cpu")
            assert res["ok"], (name, res)


def test_self_check_catches_a_wrong_backend():
    def wrong(emb, target, transform, scale, weights):  # forgets the transform
        return pairwise_loss.pairwise_loss_math(emb, target, "identity", scale, weights)

    registry.register(pairwise_loss.OP, "sdpa", wrong, lambda req: None, priority=-1)
    try:
        res = pairwise_loss.self_check_pairwise_unifrac_loss("sdpa", "cpu")
        assert not res["ok"]
    finally:
        registry._backends[pairwise_loss.OP].pop("sdpa")
