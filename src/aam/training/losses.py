"""Loss terms: pairwise UniFrac, masked nucleotides, per-ASV counts, regression/classification targets.

`MultiTaskLoss(outputs, batch)` returns a dict of 0-d tensors (no host sync): each weighted term and
`total`. Missing terms are simply absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aam.errors import AAMError
from aam.ops import pairwise_unifrac_loss
from aam.training.config import REGRESSION_LOSSES, LossConfig

MASK_STRATEGIES = ("random", "span")
MASK_TOKEN = 6
EVAL_MASK_SEED = 20240613


def mask_nucleotides(tokens: torch.Tensor, ratio: float, strategy: str = "random",
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt real bases (tokens 1-4) with MASK (6); returns (corrupted tokens, mask [U, L] bool).

    random: each base independently with probability `ratio`. span: spans of 3-5 positions start with
    probability ratio / 4 (mean span length 4), so about `ratio` of the bases are masked. Vectorised.
    """
    eligible = (tokens >= 1) & (tokens <= 4)
    if ratio <= 0:
        return tokens, torch.zeros_like(eligible)
    u = torch.rand(tokens.shape, device=tokens.device, generator=generator)
    if strategy == "random":
        mask = u < ratio
    elif strategy == "span":
        lengths = 3 + (torch.rand(tokens.shape, device=tokens.device, generator=generator) * 3).long()
        pos = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        ends = torch.where(u < ratio / 4.0, pos + lengths, torch.zeros_like(pos))
        mask = pos < torch.cummax(ends, dim=1).values
    else:
        raise AAMError(f"--nuc-mask-strategy must be one of {MASK_STRATEGIES}, got {strategy!r}")
    mask = mask & eligible
    return tokens.masked_fill(mask, MASK_TOKEN), mask


@dataclass(frozen=True)
class NucleotideTask:
    """The masked-nucleotide inputs of one batch: the model's `tokens` and either `nuc_tokens` (masked copies,
    encoded in a second pass) or `nuc_rows` (the rows of `tokens` that hold them: one pass); `targets` and
    `mask` [R, Lb] score the logits."""

    tokens: torch.Tensor
    nuc_tokens: torch.Tensor | None
    nuc_rows: torch.Tensor | None
    targets: torch.Tensor
    mask: torch.Tensor


def nucleotide_task(tokens: torch.Tensor, ratio: float, strategy: str, asv_fraction: float, nuc_pass: str,
                    generator: torch.Generator | None = None, evaluate: bool = False) -> NucleotideTask:
    """Mask a random `asv_fraction` of the batch's unique ASVs (all of them in evaluation). `nuc_pass` shared
    puts the masked copies in place of the clean rows, so the ASV encoder runs once and their embeddings see
    masked sequences; separate (and always in evaluation, so validation embeddings are clean) encodes them
    in a second pass."""
    rows = None
    if not evaluate and asv_fraction < 1.0:
        k = max(1, math.ceil(asv_fraction * tokens.shape[0]))
        rows = torch.randperm(tokens.shape[0], device=tokens.device)[:k]
    clean = tokens if rows is None else tokens[rows]
    masked, mask = mask_nucleotides(clean, ratio, strategy, generator)
    if nuc_pass == "shared" and not evaluate:
        rows = torch.arange(tokens.shape[0], device=tokens.device) if rows is None else rows
        return NucleotideTask(tokens.index_copy(0, rows, masked), None, rows, clean, mask)
    return NucleotideTask(tokens, masked, None, clean, mask)


def nucleotide_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and #correct over masked positions (sums divided by the count; 0 when none)."""
    n = mask.sum().clamp_min(1)
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    m = mask.reshape(-1).float()
    correct = ((logits.argmax(-1) == targets) & mask).sum()
    return (ce * m).sum() / n, correct


def count_loss(pred: torch.Tensor, counts: torch.Tensor, valid: torch.Tensor, target: str = "log") -> torch.Tensor:
    """Per-ASV count loss over valid slots. log: MSE on log1p(count). relative: cross-entropy between the
    softmax over a sample's slots and its relative abundances (= KL up to a constant)."""
    pred = pred.float()
    v = valid.float()
    if target == "log":
        err = (pred - torch.log1p(counts.float().clamp_min(0))) ** 2
        return (err * v).sum() / v.sum().clamp_min(1)
    logp = torch.log_softmax(pred.masked_fill(~valid, float("-inf")), dim=1).masked_fill(~valid, 0.0)
    c = counts.float().clamp_min(0) * v
    p = c / c.sum(1, keepdim=True).clamp_min(1e-12)
    rows = (v.sum(1) > 0).float()
    return -((p * logp).sum(1) * rows).sum() / rows.sum().clamp_min(1)


def regression_loss(pred: torch.Tensor, y: torch.Tensor, kind: str, quantiles: list[float] | None = None,
                    over_penalty: float = 1.0, under_penalty: float = 1.0) -> torch.Tensor:
    """pred [B, out] (quantile: [B, Q]); y [B] or [B, T] (T outputs, out = T). huber uses beta 1 on the
    transformed target scale; several outputs weigh equally. NaN in y (a sample without a value in one of
    several target columns) is left out of the mean, with zero gradient."""
    pred = pred.float()
    y = y.float()
    y = (y.unsqueeze(1) if y.dim() == 1 else y).expand_as(pred) if kind != "quantile" else y.reshape(-1, 1)
    valid = torch.isfinite(y)
    y = torch.where(valid, y, torch.zeros_like(y))
    if kind == "huber":
        err = F.smooth_l1_loss(pred, y, beta=1.0, reduction="none")
    elif kind == "mse":
        err = (pred - y) ** 2
    elif kind == "mae":
        err = (pred - y).abs()
    elif kind == "quantile":
        tau = torch.tensor(quantiles or [0.5], device=pred.device, dtype=pred.dtype)
        e = y - pred
        return torch.maximum(tau * e, (tau - 1) * e).mean()
    elif kind == "asymmetric":
        d = pred - y
        err = over_penalty * d.clamp_min(0) + under_penalty * (-d).clamp_min(0)
    else:
        raise AAMError(f"--loss-type must be one of {REGRESSION_LOSSES}, got {kind!r}")
    v = valid.to(err.dtype)
    return (err * v).sum() / v.sum().clamp_min(1.0)


def point_prediction(pred: torch.Tensor, quantiles: list[float] | None) -> torch.Tensor:
    """[B, out] -> [B]: the median quantile's column for quantile heads, else the one output; a multi-output
    regression head [B, T] is returned as is."""
    if quantiles:
        return pred[:, len(quantiles) // 2]
    return pred[:, 0] if pred.shape[1] == 1 else pred


OFFSET_MOMENTUM = 0.1


def embedding_distances(emb: torch.Tensor, transform: str, scale: float) -> torch.Tensor:
    """Transformed pairwise embedding distances f(||e_i - e_j||) [B, B] (what the pairwise loss compares)."""
    d = torch.cdist(emb.float(), emb.float())
    return torch.tanh(d / scale) if transform == "tanh" else d


@torch.no_grad()
def unifrac_offset(emb: torch.Tensor, target: torch.Tensor, offset: torch.Tensor, transform: str,
                   scale: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Offset b of the prediction f(d) + b. In training (emb requires grad) this is the batch's least-squares
    optimum mean(t - f(d)) over pairs i<j (weighted by `weights` when given), and the model's running `offset`
    buffer moves towards it (used in evaluation and by predict); otherwise the buffer's value."""
    b = emb.shape[0]
    if not emb.requires_grad or b < 2:
        return offset.float()
    iu = torch.triu_indices(b, b, offset=1, device=emb.device)
    d = embedding_distances(emb.detach(), transform, scale)[iu[0], iu[1]]
    res = target[iu[0], iu[1]] - d
    if weights is None:
        best = res.mean()
    else:
        w = weights[iu[0], iu[1]]
        best = (w * res).sum() / w.sum().clamp_min(1e-12)
    offset.lerp_(best.to(offset.dtype), OFFSET_MOMENTUM)
    return best


class MultiTaskLoss:
    """Weighted sum of the terms the batch and the outputs allow. Also returns raw counters used by metrics
    (`nuc_correct`, `nuc_total`). `pairwise_fn` replaces the local pairwise loss (distributed training)."""

    def __init__(self, config: LossConfig, pairwise_fn=None) -> None:
        self.config = config
        self.pairwise_fn = pairwise_fn

    def unifrac(self, emb: torch.Tensor, batch: dict, offset: torch.Tensor | None = None) -> torch.Tensor:
        """Local pairwise loss, or under DDP the hook `pairwise_fn(emb, batch, transform=, scale=, backend=)`
        (aam.training.distributed.global_pairwise_loss bound to the distance source) for cross-rank pairs."""
        c = self.config
        if self.pairwise_fn is not None:
            adjust = None
            if offset is not None:
                def adjust(e: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
                    return t - unifrac_offset(e, t, offset, c.unifrac_transform, c.unifrac_scale, w)
            return self.pairwise_fn(emb, batch, transform=c.unifrac_transform, scale=c.unifrac_scale,
                                    backend=c.kernels, adjust_target=adjust)
        target = batch["unifrac_target"].float()
        if offset is not None:
            target = target - unifrac_offset(emb, target, offset, c.unifrac_transform, c.unifrac_scale)
        return pairwise_unifrac_loss(emb.float(), target, transform=c.unifrac_transform,
                                     scale=c.unifrac_scale, backend=c.kernels)

    def __call__(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        c = self.config
        terms: dict[str, torch.Tensor] = {}
        total = None

        def add(name: str, value: torch.Tensor, weight: float) -> None:
            nonlocal total
            terms[name] = value.detach()
            if weight:
                total = value * weight if total is None else total + value * weight

        if batch.get("unifrac_target") is not None and c.unifrac_weight:
            add("unifrac_loss", self.unifrac(outputs["embeddings"], batch, outputs.get("distance_offset")),
                c.unifrac_weight)
        if outputs.get("nuc_logits") is not None and batch.get("nuc_mask") is not None and c.nuc_weight:
            loss, correct = nucleotide_loss(outputs["nuc_logits"], batch["tokens_original"], batch["nuc_mask"])
            add("nuc_loss", loss, c.nuc_weight)
            terms["nuc_correct"] = correct
            terms["nuc_total"] = batch["nuc_mask"].sum()
        if outputs.get("count_prediction") is not None and c.count_weight:
            add("count_loss", count_loss(outputs["count_prediction"], outputs["counts"], outputs["valid"],
                                         c.count_target), c.count_weight)
        if outputs.get("target") is not None and batch.get("y") is not None and c.target_weight:
            pred = outputs["target"]
            if c.classifier:
                w = None if c.class_weights is None else torch.tensor(c.class_weights, device=pred.device)
                loss = F.cross_entropy(pred.float(), batch["y"].long(), weight=w)
            else:
                loss = regression_loss(pred, batch["y"], c.loss_type, c.quantiles, c.over_penalty, c.under_penalty)
            add("target_loss", loss, c.target_weight)
        if total is None:
            raise AAMError("no loss term applies to this batch (no distances, nucleotides, counts or targets)")
        terms["total"] = total
        return terms


def mean_terms(sums: dict[str, torch.Tensor], n: int, world: int = 1) -> dict[str, float]:
    """Device sums of loss terms over `n` batches -> host means (one sync; summed over the ranks when `world` >
    1); the nucleotide accuracy from its counters."""
    if not sums:
        return {}
    keys = list(sums)
    vals = torch.stack([sums[k] for k in keys])
    if world > 1:
        torch.distributed.all_reduce(vals)
        n *= world
    host = dict(zip(keys, vals.tolist(), strict=True))
    out = {("loss" if k == "total" else k): v / max(n, 1) for k, v in host.items()
           if k not in ("nuc_correct", "nuc_total")}
    if host.get("nuc_total"):
        out["nuc_accuracy"] = host["nuc_correct"] / host["nuc_total"]
    return out
