"""Pairwise UniFrac loss: mean over i<j of (f(||e_i - e_j||) - t_ij)^2, f = identity or tanh(d / scale).

With per-pair `weights` [B, B] the mean is weighted: sum w r^2 / sum w over i<j; weight 0 marks a pair
without a valid target (it contributes nothing, even when its target is NaN). The gradient at
duplicate embeddings (distance 0) is defined as 0. No backend materialises a [B, B, D] tensor.

Backends (aam.ops.registry, op "pairwise_unifrac_loss"), one module each:
- `triton` (triton.py, priority 30): aam.kernels.pairwise_loss on CUDA/ROCm; on CPU only under
  TRITON_INTERPRET=1 (never chosen by `auto` there). Not yet measured on a GPU against `custom`:
  benchmarks/device_check.sh times both.
- `custom` (custom.py, priority 20): C++/OpenMP on CPU, CUDA/HIP kernels on GPU.
- `math` (reference.py, priority 0): plain torch, float64-capable reference.

dispatch.py registers them and holds the public op and its debug checks (AAM_DEBUG_CHECKS=1); opdefs.py
the custom-op definition that custom and triton share; selfcheck.py the `aam kernels` check.
"""

from aam.ops.pairwise_loss.custom import custom_bwd_op, custom_fwd_op, pairwise_loss_custom
from aam.ops.pairwise_loss.dispatch import (
    DEBUG_ENV,
    OP,
    TRANSFORMS,
    debug_checks_enabled,
    pairwise_unifrac_loss,
)
from aam.ops.pairwise_loss.reference import pairwise_loss_math
from aam.ops.pairwise_loss.selfcheck import self_check_pairwise_unifrac_loss
from aam.ops.pairwise_loss.triton import pairwise_loss_triton, triton_bwd_op, triton_fwd_op

__all__ = [
    "DEBUG_ENV", "OP", "TRANSFORMS", "custom_bwd_op", "custom_fwd_op", "debug_checks_enabled",
    "pairwise_loss_custom", "pairwise_loss_math", "pairwise_loss_triton", "pairwise_unifrac_loss",
    "self_check_pairwise_unifrac_loss", "triton_bwd_op", "triton_fwd_op",
]
