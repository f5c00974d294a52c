"""ASV encoder (nucleotides -> one vector per unique ASV) and sample encoder (ASVs -> contextual slots)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from aam.data.batching import Layout, pad_packed
from aam.models.config import ModelConfig
from aam.models.transformer import AttentionPooling, Transformer

PAD, START, MASK = 0, 5, 6


def _stack(config: ModelConfig, heads: int, layers: int) -> Transformer:
    return Transformer(config.embedding_dim, heads, layers, config.ffn_ratio, config.dropout,
                       config.attention_dropout, config.kernels, config.gradient_checkpointing,
                       config.packed_attention)


class ASVEncoder(nn.Module):
    """tokens [U, Lb] (START + bases, PAD 0) -> embeddings [U, D] and nucleotide logits [U, Lb, 7] (or of the
    rows `logit_rows` only: [R, Lb, 7])."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.embedding_dim
        self.token_embedding = nn.Embedding(config.vocab_size, d, padding_idx=PAD)
        self.position_embedding = nn.Embedding(config.max_bp + 1, d)
        self.transformer = _stack(config, config.asv_heads, config.asv_layers)
        self.pooling = AttentionPooling(d)
        self.nucleotide_head = nn.Linear(d, config.vocab_size) if config.predict_nucleotides else None
        self.kmer = config.kmer_size
        if self.kmer:
            self.kmer_embedding = nn.EmbeddingBag(4**self.kmer + 1, d, mode="mean", padding_idx=4**self.kmer)

    def forward(self, tokens: torch.Tensor, with_logits: bool = True,
                logit_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        length = tokens.shape[1]
        if length > self.position_embedding.num_embeddings:
            raise ValueError(f"token rows of length {length} exceed max_bp + 1 = {self.position_embedding.num_embeddings}")
        valid = tokens != PAD
        pos = torch.arange(length, device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(pos)[None]
        x = self.transformer(x, ~valid)
        logits = None
        if self.nucleotide_head is not None and with_logits:
            logits = self.nucleotide_head(x if logit_rows is None else x.index_select(0, logit_rows))
        pooled = self.pooling(x, valid)
        if self.kmer:
            pooled = pooled + self.kmer_embedding(kmer_ids(tokens, self.kmer))
        return pooled, logits


@torch.no_grad()
def encode_token_table(encoder: ASVEncoder, token_table: np.ndarray | torch.Tensor, device: torch.device,
                       chunk: int = 1024) -> torch.Tensor:
    """Embeddings [n, D] of every row of a token table (uint8 [n, max_bp + 1], PAD 0), in eval mode and in
    chunks: the cache of a frozen ASV encoder (each ASV encoded once per run instead of once per batch)."""
    was_training = encoder.training
    encoder.eval()
    rows = torch.as_tensor(np.asarray(token_table), dtype=torch.long)
    dtype = torch.float64 if encoder.token_embedding.weight.dtype == torch.float64 else torch.float32
    out = []
    for lo in range(0, rows.shape[0], chunk):
        part = rows[lo:lo + chunk]
        width = int((part != PAD).sum(1).max()) if part.numel() else 1
        out.append(encoder(part[:, :max(width, 1)].to(device), with_logits=False)[0].to(dtype))
    encoder.train(was_training)
    d = encoder.token_embedding.embedding_dim
    return torch.cat(out) if out else torch.zeros(0, d, device=device)


def kmer_ids(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """[U, L] tokens -> [U, L - k + 1] ids of the k-mers of consecutive bases (A C G T = tokens 1-4);
    a window holding any other token (START, PAD, MASK) gets the padding id 4**k."""
    base = tokens - 1
    ok = (base >= 0) & (base < 4)
    if tokens.shape[1] < k:
        return torch.full((tokens.shape[0], 1), 4**k, dtype=torch.long, device=tokens.device)
    ids = torch.zeros_like(tokens[:, : tokens.shape[1] - k + 1])
    good = torch.ones_like(ids, dtype=torch.bool)
    for j in range(k):
        window = slice(j, j + ids.shape[1])
        ids = ids * 4 + base[:, window].clamp(0, 3)
        good &= ok[:, window]
    return ids.masked_fill(~good, 4**k)


def pad_entries(values: torch.Tensor, offsets: torch.Tensor,
                layout: Layout | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed per-(sample, ASV) values [T, ...] -> padded [B, S, ...] and valid [B, S] (see pad_packed)."""
    return pad_packed(values, offsets, layout)


def abundance_rank(counts: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Rank of each slot by count within its sample (0 = most abundant; ties keep slot order)."""
    key = counts.masked_fill(~valid, -1.0)
    if torch.compiler.is_exporting():  # ONNX has no stable sort: count the slots ranked ahead ([B, S, S])
        n = key.shape[1]
        earlier = torch.ones(n, n, dtype=torch.bool, device=key.device).tril(-1)  # [i, j]: slot j before slot i
        larger, equal = key[:, None, :] > key[:, :, None], key[:, None, :] == key[:, :, None]
        return (larger | (equal & earlier)).sum(-1)
    order = torch.argsort(key, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return rank


class SampleEncoder(nn.Module):
    """Per-sample ASV embeddings (+ count embedding, + abundance-rank position) -> transformer -> [B, S, D]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.embedding_dim
        self.asv_encoder = ASVEncoder(config)
        self.count_embedding = config.count_embedding
        if config.count_embedding == "add":
            self.count_proj = nn.Linear(1, d)
        elif config.count_embedding == "film":
            self.count_proj = nn.Linear(1, 2 * d)
        self.rank_embedding = nn.Embedding(config.token_limit, d)
        self.transformer = _stack(config, config.sample_heads, config.sample_layers)

    def encode_asvs(self, tokens: torch.Tensor, nuc_tokens: torch.Tensor | None = None,
                    nuc_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ASV embeddings [U, D] of `tokens` and the masked-nucleotide logits: of a second pass over the masked
        copies `nuc_tokens` [R, Lb] (separate), or of rows `nuc_rows` [R] of `tokens`, which then already hold
        the masked copies (shared: one pass, and those R embeddings come from masked sequences)."""
        emb, logits = self.asv_encoder(tokens, with_logits=nuc_rows is not None, logit_rows=nuc_rows)
        if nuc_tokens is not None:
            logits = self.asv_encoder(nuc_tokens)[1]
        return emb, logits

    def forward(self, tokens: torch.Tensor, asv_index: torch.Tensor, offsets: torch.Tensor,
                counts: torch.Tensor | None, nuc_tokens: torch.Tensor | None = None,
                layout: Layout | None = None, asv_embeddings: torch.Tensor | None = None,
                nuc_rows: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        """`asv_embeddings` [U, D], when given, replaces the ASV encoder's output for the rows of `tokens`
        (embeddings cached from a frozen ASV encoder, or with an identity vector added); the masked-nucleotide
        inputs are those of `encode_asvs`."""
        nuc_logits = None
        if asv_embeddings is None:
            asv_embeddings, nuc_logits = self.encode_asvs(tokens, nuc_tokens, nuc_rows)
        elif nuc_rows is not None:
            raise ValueError("nuc_rows needs the ASV encoder's pass over tokens, not given asv_embeddings")
        elif nuc_tokens is not None:
            nuc_logits = self.asv_encoder(nuc_tokens)[1]
        x, valid = pad_entries(asv_embeddings[asv_index], offsets, layout)
        if counts is None:
            counts = torch.ones(asv_index.shape[0], device=x.device)
        c, _ = pad_entries(counts.to(x.dtype), offsets, layout)
        if self.count_embedding != "none":
            proj = self.count_proj(torch.log1p(c.clamp_min(0.0)).unsqueeze(-1))
            if self.count_embedding == "add":
                x = x + proj
            else:
                scale, shift = proj.chunk(2, dim=-1)
                x = x * (1.0 + scale) + shift
        rank = abundance_rank(c, valid).clamp_max(self.rank_embedding.num_embeddings - 1)
        x = (x + self.rank_embedding(rank)) * valid.unsqueeze(-1).to(x.dtype)
        x = self.transformer(x, ~valid) * valid.unsqueeze(-1).to(x.dtype)
        return {"sample_embeddings": x, "valid": valid, "counts": c, "nuc_logits": nuc_logits}
