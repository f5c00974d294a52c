"""Public ops. Each runs on the best available backend (`backend="auto"`) or on the one you name.

- masked_attention(q, k, v, key_padding_mask=None, key_lengths=None, scale=None, dropout_p=0.0, backend="auto")
- pairwise_unifrac_loss(emb, target, transform="identity", scale=10.0, weights=None, backend="auto")
- unifrac(table, tree, metric="unweighted", ...)
- dropout(x, p, training=True, backend="auto")

`python -m aam.ops` (or `aam kernels`) prints which backends can run here and why the others cannot.
"""

from aam.ops.attention import masked_attention
from aam.ops.dropout import dropout
from aam.ops.pairwise_loss import pairwise_unifrac_loss
from aam.ops.registry import BACKEND_CHOICES
from aam.ops.unifrac import unifrac

__all__ = ["BACKEND_CHOICES", "dropout", "masked_attention", "pairwise_unifrac_loss", "unifrac"]
