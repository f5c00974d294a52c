"""SequencePredictor: a SequenceEncoder (`base_model`) plus count and target heads and categorical fusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aam.models.config import ModelConfig
from aam.models.encoders import _stack
from aam.models.sequence_encoder import SequenceEncoder
from aam.models.transformer import AttentionPooling


class CategoricalEmbedder(nn.Module):
    """Codes [B, C] (0 = unknown/missing -> zero vector) -> [B, C * E] concatenated embeddings."""

    def __init__(self, cardinalities: list[int], dim: int, dropout: float) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(max(c, 1), dim, padding_idx=0) for c in cardinalities)
        self.drop = nn.Dropout(dropout)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        parts = []
        for i, emb in enumerate(self.embeddings):
            col = codes[:, i].clamp(0, emb.num_embeddings - 1)  # codes unseen at training time -> clamp
            parts.append(emb(col))
        return self.drop(torch.cat(parts, dim=-1))


class ASVIdentity(nn.Module):
    """A learned vector per vocabulary ASV (ids 1..V; 0 = outside the vocabulary -> zero vector), zero at the
    start so a pretrained encoder begins unchanged. Weight decay applies (it is a [V+1, D] weight, not an
    nn.Embedding). In training, `dropout` zeroes the vectors of a random fraction of the batch's ASVs."""

    def __init__(self, vocab_size: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(vocab_size + 1, dim))
        self.dropout = dropout

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        keep = ids != 0
        if self.training and self.dropout > 0:
            keep = keep & (torch.rand(ids.shape, device=ids.device) >= self.dropout)
        return F.embedding(ids, self.weight) * keep.unsqueeze(-1).to(self.weight.dtype)


class ASVBag(nn.Module):
    """The sample as a bag of its vocabulary ASVs: the sum of one learned vector per ASV present (presence, not
    abundance), a bias and GELU -> [B, dim], then dropout: a one-hidden-layer network on the sample's
    presence/absence profile, computed from the batch's identity ids. In training each ASV is left out of the
    bag with probability `input_dropout` (the rest scaled up, as dropout on the presence vector would)."""

    def __init__(self, vocab_size: int, dim: int, dropout: float, input_dropout: float) -> None:
        super().__init__()
        bound = vocab_size**-0.5  # nn.Linear's initialisation for vocab_size inputs
        self.weight = nn.Parameter(torch.empty(vocab_size + 1, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.drop = nn.Dropout(dropout)
        self.input_dropout = input_dropout

    def forward(self, entry_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """entry_ids [T]: identity id of each (sample, ASV) entry (0 = outside the vocabulary, left out);
        offsets [B+1]: sample b owns entries offsets[b]:offsets[b+1]."""
        weights = (entry_ids != 0).to(self.weight.dtype)
        if self.training and self.input_dropout > 0:
            keep = torch.rand(entry_ids.shape, device=entry_ids.device) >= self.input_dropout
            weights = weights * keep.to(weights.dtype) / (1.0 - self.input_dropout)
        bag = F.embedding_bag(entry_ids, self.weight, offsets[:-1], mode="sum", per_sample_weights=weights)
        return self.drop(F.gelu(bag + self.bias))


class SequencePredictor(nn.Module):
    """Fine-tuning model. Outputs `target` [B, out] (regression values, quantiles or class logits),
    `count_prediction` [B, S] (log1p counts or relative-abundance logits) and the base outputs."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.base_model = SequenceEncoder(config)
        if config.count_prediction:
            self.count_encoder = _stack(config, config.count_heads, config.count_layers)
            self.count_head = nn.Linear(d, 1)
        n_cat = len(config.categorical_cardinalities)
        if n_cat:
            self.categorical = CategoricalEmbedder(config.categorical_cardinalities, config.categorical_embed_dim,
                                                   config.dropout)
            cat_dim = n_cat * config.categorical_embed_dim
            in_dim = d + cat_dim if config.categorical_fusion == "concat" else cat_dim
            self.categorical_projection = nn.Linear(in_dim, d)  # gmu: W_c
            if config.categorical_fusion == "gmu":
                self.categorical_gate = nn.Linear(d + cat_dim, d)  # W_g
        if config.target_input != "embedding":
            self.target_encoder = _stack(config, config.target_heads, config.target_layers)
            self.target_pooling = AttentionPooling(d)
            self.target_norm = nn.LayerNorm(d) if config.target_layer_norm else nn.Identity()
        if config.target_input != "tokens":
            # The pretrained pooled embedding has norm ~1 (UniFrac scale); rescale it for the head.
            self.embedding_norm = nn.LayerNorm(d)
        if config.asv_readout != "none":
            # zero init: the model starts as without the readout, and the scores still get gradients
            self.asv_score = nn.Linear(d, self.output_width)
            nn.init.zeros_(self.asv_score.weight)
            nn.init.zeros_(self.asv_score.bias)
        if config.asv_vocab_size and config.asv_identity:
            self.asv_identity = ASVIdentity(config.asv_vocab_size, d, config.asv_identity_dropout)
        if config.asv_bag_dim:
            self.asv_bag = ASVBag(config.asv_vocab_size, config.asv_bag_dim, config.asv_bag_dropout,
                                  config.asv_bag_input_dropout)
        width = (2 * d if config.target_input == "both" else d) + config.asv_bag_dim
        self.target_head = nn.Linear(width, self.output_width)
        nn.init.xavier_uniform_(self.target_head.weight)
        nn.init.zeros_(self.target_head.bias)

    @property
    def output_width(self) -> int:
        c = self.config
        if c.is_classifier:
            return c.n_classes
        return c.out_dim * max(len(c.quantiles), 1)

    @property
    def asv_encoder(self) -> nn.Module:
        return self.base_model.asv_encoder

    def freeze_base(self) -> None:
        """Stop gradients into the pretrained encoder (its dropout stays active only if train() is called)."""
        for p in self.base_model.parameters():
            p.requires_grad_(False)

    def freeze_asv_encoder(self) -> None:
        """Stop gradients into the nucleotide-level ASV encoder only (the sample encoder still trains); the
        trainer then encodes each ASV once per run (a cache) instead of once per batch."""
        for p in self.asv_encoder.parameters():
            p.requires_grad_(False)

    def forward(self, tokens: torch.Tensor, asv_index: torch.Tensor, offsets: torch.Tensor,
                counts: torch.Tensor | None = None, categorical: torch.Tensor | None = None,
                nuc_tokens: torch.Tensor | None = None, layout: tuple | None = None,
                asv_ids: torch.Tensor | None = None, asv_embeddings: torch.Tensor | None = None,
                nuc_rows: torch.Tensor | None = None, **_: object) -> dict[str, torch.Tensor | None]:
        """`asv_ids` [U]: identity index of each row of `tokens` (needed with an ASV vocabulary);
        `asv_embeddings` [U, D]: the ASV encoder's output for those rows, when cached; `nuc_tokens`/`nuc_rows`:
        the masked-nucleotide inputs (SampleEncoder.encode_asvs)."""
        if self.config.asv_vocab_size and asv_ids is None:
            raise ValueError("this model has an ASV vocabulary: the batch must carry asv_ids")
        nuc_logits = None
        if self.config.asv_vocab_size and self.config.asv_identity:
            if asv_embeddings is None:
                asv_embeddings, nuc_logits = self.base_model.sample_encoder.encode_asvs(tokens, nuc_tokens, nuc_rows)
                nuc_tokens = nuc_rows = None
            asv_embeddings = asv_embeddings + self.asv_identity(asv_ids).to(asv_embeddings.dtype)
        out = self.base_model(tokens, asv_index, offsets, counts, nuc_tokens, layout, asv_embeddings,
                              nuc_rows=nuc_rows)
        if nuc_logits is not None:
            out["nuc_logits"] = nuc_logits
        x, valid = out["sample_embeddings"], out["valid"]
        keep = valid.unsqueeze(-1).to(x.dtype)
        if self.config.count_prediction:
            out["count_prediction"] = self.count_head(self.count_encoder(x, ~valid)).squeeze(-1)
        fusion = self.config.categorical_fusion if self.config.categorical_cardinalities else None
        if fusion is not None and categorical is None:
            categorical = torch.zeros(x.shape[0], len(self.config.categorical_cardinalities),
                                      dtype=torch.long, device=x.device)
        if fusion in ("concat", "add"):
            cat = self.categorical(categorical).unsqueeze(1).expand(-1, x.shape[1], -1)
            if self.config.categorical_fusion == "concat":
                x = self.categorical_projection(torch.cat([x, cat.to(x.dtype)], dim=-1))
            else:
                x = x + self.categorical_projection(cat.to(x.dtype))
            x = x * keep  # padded slots stay zero after fusion
        if self.config.target_input == "embedding":
            pooled = self.embedding_norm(out["embeddings"])
        else:
            h = self.target_encoder(x, ~valid) * keep
            pooled = self.target_norm(self.target_pooling(h, valid))
        if fusion == "gmu":  # gated multimodal unit on the pooled sample: h + sigmoid(W_g [h; c]) * tanh(W_c c)
            c = self.categorical(categorical).to(pooled.dtype)
            gate = torch.sigmoid(self.categorical_gate(torch.cat([pooled, c], dim=-1)))
            pooled = pooled + gate * torch.tanh(self.categorical_projection(c))
        if self.config.target_input == "both":
            pooled = torch.cat([pooled, self.embedding_norm(out["embeddings"])], dim=-1)
        if self.config.asv_bag_dim:
            pooled = torch.cat([pooled, self.asv_bag(asv_ids[asv_index], offsets).to(pooled.dtype)], dim=-1)
        out["target"] = self.target_head(pooled)
        if self.config.asv_readout != "none":
            out["target"] = out["target"] + self.asv_readout(x, valid, out["counts"])
        return out

    def asv_readout(self, x: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Additive readout: sum_i w_i * score(x_i) over a sample's valid ASV slots, with w the presence
        (1 / n_valid) or relative-abundance weights; padded slots get weight 0. [B, S, D] -> [B, out]."""
        if self.config.asv_readout == "abundance":
            w = counts.clamp_min(0.0).to(x.dtype) * valid.to(x.dtype)
        else:
            w = valid.to(x.dtype)
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return torch.einsum("bs,bso->bo", w, self.asv_score(x))
