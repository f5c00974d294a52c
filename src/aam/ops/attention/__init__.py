"""Masked attention with key padding: softmax(q k^T * scale, keys masked) v, per head.

Contract on every backend: a query whose keys are all padding yields exactly 0 output and 0 gradient.
Backends register in aam.ops.registry under the op names "masked_attention" and
"masked_attention_varlen", one module each:

| backend | module | devices | dtypes | dropout | varlen |
|---|---|---|---|---|---|
| custom  | custom.py    | CPU (aam._C, OpenMP), CUDA/ROCm (aam._C_cuda / _C_hip, Dh 16/32/64/128) | fp32/fp16/bf16 (+fp64 CPU) | no | yes |
| triton  | triton.py    | CUDA/ROCm; CPU only under TRITON_INTERPRET=1 (tests) | fp32/fp16/bf16 | no | yes |
| sdpa    | sdpa.py      | any (torch SDPA; self-checked against math on ROCm before `auto` trusts it) | any | yes | no |
| math    | reference.py | any (plain torch, float64-capable reference) | any | yes | yes (pads/unpads) |

dispatch.py registers them and holds the public functions; opdefs.py the custom-op schemas and autograd
glue that custom and triton share; selfcheck.py the parity/contract checks (tests, `aam kernels`).
Compiled and Triton backends are `torch.library.custom_op`s (`aam::attention_fwd`, `aam::attention_bwd`,
`aam::attention_varlen_fwd/bwd`, `aam::attention_triton_fwd/bwd`,
`aam::attention_triton_varlen_fwd/bwd`) with fake and autograd registrations,
so they work under autograd, torch.compile and opcheck.
"""

from aam.ops.attention.dispatch import (
    CPU_CUSTOM_MAX_DENSE_LEN,
    OP,
    OP_VARLEN,
    masked_attention,
    masked_attention_varlen,
    masked_attention_varlen_qkv,
    packed_backend,
)
from aam.ops.attention.opdefs import GPU_HEAD_DIMS
from aam.ops.attention.reference import attention_math, lengths_to_padding_mask
from aam.ops.attention.selfcheck import self_check, self_check_masked_attention_varlen

__all__ = [
    "CPU_CUSTOM_MAX_DENSE_LEN", "GPU_HEAD_DIMS", "OP", "OP_VARLEN", "attention_math", "lengths_to_padding_mask",
    "masked_attention", "masked_attention_varlen", "masked_attention_varlen_qkv", "packed_backend", "self_check",
    "self_check_masked_attention_varlen",
]
