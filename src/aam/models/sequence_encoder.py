"""SequenceEncoder: the pretraining model (sample encoder -> encoder transformer -> pooled [B, D])."""

from __future__ import annotations

import torch
from torch import nn

from aam.models.config import ModelConfig
from aam.models.encoders import SampleEncoder, _stack
from aam.models.transformer import AttentionPooling


class SequenceEncoder(nn.Module):
    """Batch (tokens, asv_index, offsets, counts) -> dict with `embeddings` [B, D] (UniFrac space),
    `sample_embeddings` [B, S, D], `valid` [B, S], `counts` [B, S].

    `nuc_tokens` [R, Lb] (nucleotide-masked token rows) adds `nuc_logits` [R, Lb, 7] from a separate
    ASV-encoder pass (the embeddings come from clean sequences, as in predict); `nuc_rows` [R] instead says
    that those rows of `tokens` are masked copies, whose logits come from the one pass."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.sample_encoder = SampleEncoder(config)
        self.encoder = _stack(config, config.encoder_heads, config.encoder_layers)
        self.pooling = AttentionPooling(config.embedding_dim)
        # Embedding distances are compared with UniFrac distances in [0, 1]: start the pooled embedding at
        # norm ~1 (LayerNorm gain 1/sqrt(D)) instead of ~sqrt(D), so the loss need not first shrink the scale.
        nn.init.constant_(self.pooling.norm.weight, config.embedding_dim**-0.5)
        # UniFrac distances sit well above 0 (mean ~0.6, spread ~0.1 on typical data); a Euclidean embedding
        # cannot add a constant to every pairwise distance, so the prediction is f(d) + offset. The offset is
        # the running mean of the per-batch optimum (set by MultiTaskLoss in training; see `unifrac_offset`).
        self.register_buffer("distance_offset", torch.zeros(()))

    @property
    def asv_encoder(self) -> nn.Module:
        return self.sample_encoder.asv_encoder

    def forward(self, tokens: torch.Tensor, asv_index: torch.Tensor, offsets: torch.Tensor,
                counts: torch.Tensor | None = None, nuc_tokens: torch.Tensor | None = None,
                layout: tuple | None = None, asv_embeddings: torch.Tensor | None = None,
                nuc_rows: torch.Tensor | None = None, **_: object) -> dict[str, torch.Tensor | None]:
        out = self.sample_encoder(tokens, asv_index, offsets, counts, nuc_tokens, layout, asv_embeddings, nuc_rows)
        valid = out["valid"]
        x = self.encoder(out["sample_embeddings"], ~valid) * valid.unsqueeze(-1).to(out["sample_embeddings"].dtype)
        out["sample_embeddings"] = x
        out["embeddings"] = self.pooling(x, valid)
        out["distance_offset"] = self.distance_offset
        return out

