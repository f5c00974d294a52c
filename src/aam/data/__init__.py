"""Data layer: BIOM tables, sequences, tokenizer, distances, metadata, targets, splits, batches, synthetic data."""

from aam.data.batching import pad_packed, unpad
from aam.data.dataset import SampleDataset, collate
from aam.data.metadata import load_metadata, numeric_target, require_columns, require_samples
from aam.data.tokenizer import MASK, PAD, START, VOCAB_SIZE, TokenReport, tokenize

__all__ = [
    "MASK", "PAD", "START", "VOCAB_SIZE", "SampleDataset", "TokenReport", "collate", "load_metadata",
    "numeric_target", "pad_packed", "require_columns", "require_samples", "tokenize", "unpad",
]  # fmt: skip
