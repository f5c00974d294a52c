"""Models: ASV encoder -> sample encoder -> SequenceEncoder (pretraining) / SequencePredictor (fine-tuning)."""

from __future__ import annotations

from torch import nn

from aam.models.config import ModelConfig
from aam.models.encoders import ASVEncoder, SampleEncoder
from aam.models.sequence_encoder import SequenceEncoder
from aam.models.sequence_predictor import SequencePredictor
from aam.models.transformer import AttentionPooling, Block, Transformer


def build_model(config: ModelConfig) -> nn.Module:
    """The model that `config.kind` names."""
    return SequenceEncoder(config) if config.kind == "encoder" else SequencePredictor(config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["ASVEncoder", "AttentionPooling", "Block", "ModelConfig", "SampleEncoder", "SequenceEncoder",
           "SequencePredictor", "Transformer", "build_model", "count_parameters"]
