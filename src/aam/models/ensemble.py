"""Several SequencePredictors that predict together (`aam train --ensemble K`)."""

from __future__ import annotations

import torch
from torch import nn

from aam.models.sequence_predictor import SequencePredictor


class EnsemblePredictor(nn.Module):
    """Members with one config; `target` is the mean of the members' regression outputs (model scale), or for
    classifiers the log of their mean class probabilities (so softmax/argmax read the averaged probabilities).
    Other outputs come from the first member."""

    def __init__(self, members: list[SequencePredictor]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.config = members[0].config
        first = members[0].asv_encoder.state_dict()
        # one cache of ASV embeddings serves every member when their ASV encoders are the same (frozen) weights
        self.shared_asv_encoder = all(
            all(torch.equal(first[k], v) for k, v in m.asv_encoder.state_dict().items()) for m in members[1:])

    @property
    def asv_encoder(self) -> nn.Module | None:
        """The members' common ASV encoder, or None when they differ (each then encodes its own ASVs)."""
        return self.members[0].asv_encoder if self.shared_asv_encoder else None

    @property
    def base_model(self) -> nn.Module:
        return self.members[0].base_model

    def forward(self, **inputs: object) -> dict[str, torch.Tensor | None]:
        if not self.shared_asv_encoder:
            inputs = {**inputs, "asv_embeddings": None}
        outs = [m(**inputs) for m in self.members]
        out = dict(outs[0])
        targets = torch.stack([o["target"].float() for o in outs])
        if self.config.is_classifier:
            out["target"] = torch.log(torch.softmax(targets, dim=-1).mean(0).clamp_min(1e-12))
        else:
            out["target"] = targets.mean(0)
        return out
