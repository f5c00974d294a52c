"""Models: ASV encoder -> sample encoder -> SequenceEncoder (pretraining) / SequencePredictor (fine-tuning).

The model classes load on first use (PEP 562), so `ModelConfig` (torch-free) can be read without importing
torch: `aam <command> --help` starts in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aam.models.config import ModelConfig

if TYPE_CHECKING:
    from torch import nn

_LAZY = {"ASVEncoder": "encoders", "SampleEncoder": "encoders", "SequenceEncoder": "sequence_encoder",
         "SequencePredictor": "sequence_predictor", "AttentionPooling": "transformer", "Block": "transformer",
         "Transformer": "transformer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"aam.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'aam.models' has no attribute {name!r}")


def build_model(config: ModelConfig) -> nn.Module:
    """The model that `config.kind` names."""
    from aam.models.sequence_encoder import SequenceEncoder
    from aam.models.sequence_predictor import SequencePredictor

    return SequenceEncoder(config) if config.kind == "encoder" else SequencePredictor(config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["ASVEncoder", "AttentionPooling", "Block", "ModelConfig", "SampleEncoder", "SequenceEncoder",
           "SequencePredictor", "Transformer", "build_model", "count_parameters"]
