"""Losses: masking statistics, masked CE, count/target losses, pairwise UniFrac through aam.ops."""

from __future__ import annotations

import pytest
import torch

from aam.errors import AAMError
from aam.ops import pairwise_unifrac_loss
from aam.training.losses import (
    LossConfig,
    MultiTaskLoss,
    count_loss,
    mask_nucleotides,
    nucleotide_loss,
    nucleotide_task,
    regression_loss,
)


def tokens(n=200, length=151):
    t = torch.randint(1, 5, (n, length))
    t[:, 0] = 5
    t[::3, 100:] = 0
    t[1, 5] = 6  # an ambiguous base (MASK from the tokenizer) is never a target
    return t


@pytest.mark.parametrize("strategy", ["random", "span"])
def test_mask_rate_and_eligibility(strategy):
    t = tokens()
    corrupted, mask = mask_nucleotides(t, 0.15, strategy)
    eligible = (t >= 1) & (t <= 4)
    assert not (mask & ~eligible).any()
    rate = mask.sum().item() / eligible.sum().item()
    assert 0.10 < rate < 0.20
    assert (corrupted[mask] == 6).all() and torch.equal(corrupted[~mask], t[~mask])


def test_span_masking_makes_runs():
    _, mask = mask_nucleotides(tokens(50), 0.15, "span")
    starts = (mask[:, 1:] & ~mask[:, :-1]).sum()
    assert mask.sum() / starts > 2.5  # mean run length ~4 (runs get cut at padding/merge)


def test_eval_masking_is_reproducible_with_generator():
    t = tokens()
    m1 = mask_nucleotides(t, 0.15, "random", torch.Generator().manual_seed(3))[1]
    m2 = mask_nucleotides(t, 0.15, "random", torch.Generator().manual_seed(3))[1]
    assert torch.equal(m1, m2)


def test_nucleotide_task_shared_and_separate():
    t = tokens(40)
    torch.manual_seed(0)
    shared = nucleotide_task(t, 0.15, "random", 0.25, "shared")
    torch.manual_seed(0)
    separate = nucleotide_task(t, 0.15, "random", 0.25, "separate")
    assert shared.nuc_tokens is None and shared.nuc_rows.shape == (10,)
    assert separate.nuc_rows is None and separate.nuc_tokens.shape == (10, t.shape[1])
    # the same rows and masks either way; shared swaps the masked copies in, leaving the other rows clean
    assert torch.equal(shared.targets, separate.targets) and torch.equal(shared.mask, separate.mask)
    assert torch.equal(shared.tokens[shared.nuc_rows], separate.nuc_tokens)
    others = torch.ones(40, dtype=torch.bool)
    others[shared.nuc_rows] = False
    assert torch.equal(shared.tokens[others], t[others]) and torch.equal(shared.targets, t[shared.nuc_rows])
    assert torch.equal(separate.tokens, t)
    # evaluation masks every row in a second pass, whatever the mode: validation embeddings stay clean
    ev = nucleotide_task(t, 0.15, "random", 0.25, "shared", torch.Generator().manual_seed(1), evaluate=True)
    assert ev.nuc_rows is None and torch.equal(ev.tokens, t) and ev.nuc_tokens.shape == t.shape


def test_nucleotide_loss_only_on_masked_positions():
    t = tokens(4, 10)
    mask = torch.zeros_like(t, dtype=torch.bool)
    mask[0, 3] = True
    logits = torch.zeros(4, 10, 7)
    logits[0, 3, t[0, 3]] = 10.0  # right at the masked position
    logits[1] = 5.0  # garbage elsewhere must not count
    loss, correct = nucleotide_loss(logits, t, mask)
    assert loss.item() < 1e-3 and correct.item() == 1


def test_count_loss_log_and_relative():
    valid = torch.tensor([[True, True, False]])
    counts = torch.tensor([[9.0, 1.0, 0.0]])
    exact = torch.log1p(counts)
    assert count_loss(exact, counts, valid, "log").item() == pytest.approx(0.0)
    rel_good = torch.log(torch.tensor([[0.9, 0.1, 1.0]]))
    rel_bad = torch.log(torch.tensor([[0.1, 0.9, 1.0]]))
    assert count_loss(rel_good, counts, valid, "relative") < count_loss(rel_bad, counts, valid, "relative")


def test_regression_losses():
    y = torch.tensor([0.0, 1.0])
    pred = torch.tensor([[1.0], [1.0]])
    assert regression_loss(pred, y, "mse").item() == pytest.approx(0.5)
    assert regression_loss(pred, y, "mae").item() == pytest.approx(0.5)
    assert regression_loss(pred, y, "huber").item() == pytest.approx(0.25)
    assert regression_loss(pred, y, "asymmetric", over_penalty=2.0).item() == pytest.approx(1.0)
    q = regression_loss(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([1.0]), "quantile", [0.1, 0.5, 0.9])
    assert q.item() == pytest.approx((0.1 + 0.5 + 0.9) / 3)


def test_unifrac_term_uses_ops_and_weights():
    emb = torch.randn(5, 4, requires_grad=True)
    target = torch.rand(5, 5)
    cfg = LossConfig(unifrac_weight=2.0, nuc_weight=0.0, kernels="math")
    terms = MultiTaskLoss(cfg)({"embeddings": emb}, {"unifrac_target": target})
    ref = pairwise_unifrac_loss(emb, target, backend="math")
    assert terms["unifrac_loss"].item() == pytest.approx(ref.item(), rel=1e-6)
    assert terms["total"].item() == pytest.approx(2 * ref.item(), rel=1e-6)
    terms["total"].backward()


def test_distributed_hook_replaces_local_pairwise():
    calls = []

    def fake(emb, batch, transform, scale, backend, adjust_target=None):
        calls.append((transform, scale, backend, batch["sample_ids"]))
        return emb.sum() * 0 + 7.0

    loss = MultiTaskLoss(LossConfig(unifrac_transform="tanh", unifrac_scale=3.0), pairwise_fn=fake)
    out = loss({"embeddings": torch.randn(3, 2)}, {"unifrac_target": torch.rand(3, 3), "sample_ids": ["a", "b", "c"]})
    assert out["total"].item() == 7.0
    assert calls == [("tanh", 3.0, "auto", ["a", "b", "c"])]


def test_classification_with_class_weights():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 0])
    plain = MultiTaskLoss(LossConfig(classifier=True))({"target": logits}, {"y": y})["target_loss"]
    weighted = MultiTaskLoss(LossConfig(classifier=True, class_weights=[1.0, 5.0]))({"target": logits}, {"y": y})
    assert weighted["target_loss"].item() == pytest.approx(plain.item())  # only class 0 present: weights cancel


def test_bad_options():
    with pytest.raises(AAMError):
        LossConfig(loss_type="hinge")
    with pytest.raises(AAMError):
        LossConfig(unifrac_transform="sigmoid")
    with pytest.raises(AAMError):
        LossConfig(loss_type="quantile", quantiles=[0.5, 1.5])
    with pytest.raises(AAMError, match="no loss term"):
        MultiTaskLoss(LossConfig())({}, {})
