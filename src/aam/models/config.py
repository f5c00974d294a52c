"""`ModelConfig`: every hyperparameter of a model, stored in checkpoints so `predict` rebuilds it exactly."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aam.errors import AAMError

MODEL_KINDS = ("encoder", "predictor")
COUNT_EMBEDDINGS = ("none", "add", "film")
COUNT_TARGETS = ("log", "relative")
FUSIONS = ("concat", "add", "gmu")
TARGET_INPUTS = ("tokens", "embedding", "both")
ASV_READOUTS = ("none", "presence", "abundance")
# Config keys that older checkpoints lack, with the behaviour those checkpoints were trained with.
ADDED_LATER: dict[str, Any] = {"target_input": "tokens", "asv_readout": "none"}


@dataclass
class ModelConfig:
    """Architecture of a SequenceEncoder ("encoder", pretraining) or SequencePredictor ("predictor").

    One embedding width D for every stack; heads and layers per stack. Vocabulary: PAD 0, A1 C2 G3 T4,
    START 5, MASK 6.
    """

    kind: str = "encoder"
    vocab_size: int = 7
    max_bp: int = 150
    token_limit: int = 1024
    embedding_dim: int = 128
    dropout: float = 0.1
    attention_dropout: float = 0.0
    ffn_ratio: int = 4
    asv_heads: int = 4
    asv_layers: int = 4
    sample_heads: int = 4
    sample_layers: int = 4
    encoder_heads: int = 4
    encoder_layers: int = 4
    count_embedding: str = "none"
    kmer_size: int = 4
    predict_nucleotides: bool = True
    gradient_checkpointing: bool = False
    kernels: str = "auto"
    # Transformers run on the valid tokens only (varlen attention) where a varlen kernel exists.
    packed_attention: bool = True
    # predictor only
    out_dim: int = 1
    n_classes: int = 0
    quantiles: list[float] = field(default_factory=list)
    count_prediction: bool = True
    count_target: str = "log"
    count_heads: int = 4
    count_layers: int = 1
    target_heads: int = 4
    target_layers: int = 4
    target_layer_norm: bool = True
    # What the target head reads: "tokens" (target transformer over the ASV slots, attention-pooled),
    # "embedding" (the base's pooled, pretrained sample embedding) or "both" (the two concatenated).
    target_input: str = "both"
    # Additive per-ASV readout added to the target head's output: each ASV slot's embedding -> a score,
    # averaged over the sample's ASVs ("presence": equal weights; "abundance": relative-abundance weights).
    asv_readout: str = "none"
    # ASV identity: a learned vector per ASV of the training vocabulary (Preprocessing.asv_vocabulary), added
    # to the sequence embedding of that ASV; 0 = off. Identity dropout zeroes it for a random fraction of a
    # batch's ASVs in training, so the sequence path keeps working for ASVs outside the vocabulary.
    asv_vocab_size: int = 0
    asv_identity: bool = True  # with a vocabulary: add its identity vectors to the sequence embeddings
    asv_identity_dropout: float = 0.0
    # ASV bag: a hidden layer of this width on the sample's presence profile over the vocabulary (sum of one
    # vector per ASV present, GELU, dropout), concatenated to the target head's input; 0 = off.
    asv_bag_dim: int = 0
    asv_bag_dropout: float = 0.5
    asv_bag_input_dropout: float = 0.2
    categorical_cardinalities: list[int] = field(default_factory=list)
    categorical_embed_dim: int = 16
    categorical_fusion: str = "concat"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise AAMError (one line) for an inconsistent configuration."""
        d = self.embedding_dim
        checks = [
            (self.kind in MODEL_KINDS, f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}"),
            (self.count_embedding in COUNT_EMBEDDINGS,
             f"--count-embedding must be one of {COUNT_EMBEDDINGS}, got {self.count_embedding!r}"),
            (self.count_target in COUNT_TARGETS, f"count target must be one of {COUNT_TARGETS}"),
            (self.categorical_fusion in FUSIONS, f"--categorical-fusion must be one of {FUSIONS}"),
            (self.target_input in TARGET_INPUTS, f"--target-input must be one of {TARGET_INPUTS}"),
            (self.asv_readout in ASV_READOUTS, f"--asv-readout must be one of {ASV_READOUTS}"),
            (not (self.target_input == "embedding" and self.categorical_cardinalities
                  and self.categorical_fusion != "gmu"),
             "--target-input embedding joins categorical columns after pooling only: use --categorical-fusion gmu"),
            (d > 0 and self.max_bp > 0 and self.token_limit > 0,
             "--embedding-dim, --max-bp and --token-limit must be positive"),
            (0 <= self.kmer_size <= 8, "kmer_size must be between 0 (off) and 8"),
            (self.n_classes != 1, "a classifier needs at least 2 classes"),
            (self.out_dim >= 1, "out_dim must be >= 1"),
            (self.asv_vocab_size >= 0, "asv_vocab_size must be >= 0"),
            (0.0 <= self.asv_identity_dropout < 1.0, "--asv-identity-dropout must be in [0, 1)"),
            (self.asv_bag_dim >= 0 and (not self.asv_bag_dim or self.asv_vocab_size),
             "--asv-bag-dim needs an ASV vocabulary (asv_vocab_size > 0)"),
            (0.0 <= self.asv_bag_dropout < 1.0 and 0.0 <= self.asv_bag_input_dropout < 1.0,
             "ASV bag dropouts must be in [0, 1)"),
        ]
        for heads in (self.asv_heads, self.sample_heads, self.encoder_heads, self.count_heads, self.target_heads):
            checks.append((heads > 0 and d % heads == 0,
                           f"--embedding-dim {d} must be divisible by --attention-heads {heads}"))
        for ok, msg in checks:
            if not ok:
                raise AAMError(msg)

    @property
    def is_classifier(self) -> bool:
        return self.n_classes > 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild from `to_dict` output; unknown keys are an error (a checkpoint from another version).
        Keys added after a checkpoint was written take the value that reproduces the model it holds."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise AAMError(f"model config has unknown keys {unknown}; the checkpoint comes from another aam version")
        return cls(**{**ADDED_LATER, **data})
