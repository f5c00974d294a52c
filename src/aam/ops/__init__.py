"""Public ops. Each runs on the best available backend (`backend="auto"`) or on the one you name.

- masked_attention(q, k, v, key_padding_mask=None, key_lengths=None, scale=None, dropout_p=0.0, backend="auto")
- pairwise_unifrac_loss(emb, target, transform="identity", scale=10.0, weights=None, backend="auto")
- unifrac.unifrac(table, tree, metric="unweighted", ...)  (the op module aam.ops.unifrac)
- dropout.dropout(x, p, training=True, backend="auto")  (the op module aam.ops.dropout)
- mlp.gelu_mlp(x, fc, fc_out, backend="auto")  (the op module aam.ops.mlp: the transformer's feed-forward)

`python -m aam.ops` (or `aam kernels`) prints which backends can run here and why the others cannot.
"""

from __future__ import annotations

import importlib
from typing import Any

# the names of `--kernels`; here rather than in registry.py so the CLI's --help reads them without torch
BACKEND_CHOICES = ("auto", "custom", "triton", "sdpa", "math")
_LAZY = {"masked_attention": "aam.ops.attention", "pairwise_unifrac_loss": "aam.ops.pairwise_loss"}
_SUBMODULES = ("attention", "dropout", "mlp", "pairwise_loss", "unifrac", "registry", "parity", "diagnostics")


def __getattr__(name: str) -> Any:
    """The ops load (with torch) on first use. `dropout` and `unifrac` are the op modules (their functions:
    aam.ops.dropout.dropout, aam.ops.unifrac.unifrac): a package attribute named like a submodule is that
    submodule once it is imported."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"aam.ops.{name}")
    raise AttributeError(f"module 'aam.ops' has no attribute {name!r}")


__all__ = ["BACKEND_CHOICES", "masked_attention", "pairwise_unifrac_loss"]
