"""SequenceEncoder: the pretraining model (sample encoder -> encoder transformer -> pooled [B, D])."""

from __future__ import annotations

import torch
from torch import nn

from aam.models.config import ModelConfig
from aam.models.encoders import SampleEncoder, _stack
from aam.models.transformer import AttentionPooling


class SequenceEncoder(nn.Module):
    """Batch (tokens, asv_index, offsets, counts) -> dict with `embeddings` [B, D] (UniFrac space),
    `sample_embeddings` [B, S, D], `valid` [B, S], `counts` [B, S], `nuc_logits` [U, Lb, 7] or None."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.sample_encoder = SampleEncoder(config)
        self.encoder = _stack(config, config.encoder_heads, config.encoder_layers)
        self.pooling = AttentionPooling(config.embedding_dim)

    def forward(self, tokens: torch.Tensor, asv_index: torch.Tensor, offsets: torch.Tensor,
                counts: torch.Tensor | None = None, **_: object) -> dict[str, torch.Tensor | None]:
        out = self.sample_encoder(tokens, asv_index, offsets, counts)
        valid = out["valid"]
        x = self.encoder(out["sample_embeddings"], ~valid) * valid.unsqueeze(-1).to(out["sample_embeddings"].dtype)
        out["sample_embeddings"] = x
        out["embeddings"] = self.pooling(x, valid)
        return out

    def nucleotide_logits(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """Nucleotide logits [U, Lb, 7] of token rows (ASV encoder only)."""
        return self.sample_encoder.asv_encoder(tokens)[1]
