"""Data layer: BIOM tables, sequences, tokenizer, distances, metadata, targets, splits, batches, synthetic data.

Names load lazily (PEP 562), so `import aam.data.synthetic` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_table": "biom_io", "rarefy": "biom_io", "RarefactionInfo": "biom_io", "sample_totals": "biom_io",
    "feature_sequences": "sequences", "load_sequences": "sequences", "read_qza_tree": "sequences",
    "is_sequence": "sequences", "table_sequences": "sequences",
    "tokenize": "tokenizer", "TokenReport": "tokenizer", "PAD": "tokenizer", "START": "tokenizer",
    "MASK": "tokenizer", "VOCAB_SIZE": "tokenizer",
    "DistanceMatrix": "distances", "load_distance_matrix": "distances", "write_distance_matrix": "distances",
    "check_covers": "distances",
    "load_metadata": "metadata", "numeric_target": "metadata", "require_samples": "metadata",
    "require_columns": "metadata", "categorical_values": "metadata",
    "TargetTransform": "targets", "LabelEncoder": "targets", "CategoryEncoder": "targets",
    "split_samples": "split",
    "SampleDataset": "dataset", "collate": "dataset",
    "pad_packed": "batching", "unpad": "batching",
    "make_dataset": "synthetic", "write_dataset": "synthetic", "SyntheticDataset": "synthetic",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"aam.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'aam.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
