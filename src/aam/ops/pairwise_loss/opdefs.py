"""The custom-op definition shared by the compiled (`custom`) and Triton backends of the pairwise loss.

Every compiled forward returns (loss, coef, denom): coef [B, B] holds the per-pair backward
coefficients c_ij = 2 w_ij r_ij f'(d_ij) / d_ij (symmetric, 0 on the diagonal), denom the number of
pairs (or the weight sum). Backward is grad_e_i = grad * sum_j c_ij (e_i - e_j) / denom.
"""

from __future__ import annotations

import torch

FWD_SCHEMA = "(Tensor emb, Tensor target, Tensor? weights, bool use_tanh, float scale) -> (Tensor, Tensor, Tensor)"
BWD_SCHEMA = (
    "(Tensor grad, Tensor emb, Tensor target, Tensor? weights, Tensor coef, Tensor denom, bool use_tanh, "
    "float scale) -> Tensor"
)


def define(name: str, fwd_impl, bwd_impl, aux_dtypes):
    """Define aam::<name>_fwd / aam::<name>_bwd with fake kernels and autograd; returns both ops."""
    fwd = torch.library.custom_op(f"aam::{name}_fwd", fwd_impl, mutates_args=(), schema=FWD_SCHEMA)
    bwd = torch.library.custom_op(f"aam::{name}_bwd", bwd_impl, mutates_args=(), schema=BWD_SCHEMA)

    @fwd.register_fake
    def _(emb, target, weights, use_tanh, scale):
        b = emb.shape[0]
        coef_dtype, denom_dtype = aux_dtypes(emb)
        return (emb.new_empty(()), emb.new_empty((b, b), dtype=coef_dtype),
                emb.new_empty((), dtype=denom_dtype))

    @bwd.register_fake
    def _(grad, emb, target, weights, coef, denom, use_tanh, scale):
        return torch.empty_like(emb)

    def setup_context(ctx, inputs, output):
        emb, target, weights, use_tanh, scale = inputs
        _, coef, denom = output
        ctx.save_for_backward(emb, target, weights, coef, denom)
        ctx.use_tanh, ctx.scale = use_tanh, scale

    def backward(ctx, grad_loss, grad_coef, grad_denom):
        emb, target, weights, coef, denom = ctx.saved_tensors
        grad_emb = bwd(grad_loss, emb, target, weights, coef, denom, ctx.use_tanh, ctx.scale)
        return grad_emb, None, None, None, None

    fwd.register_autograd(backward, setup_context=setup_context)
    return fwd, bwd


def run(op, emb: torch.Tensor, target: torch.Tensor, transform: str, scale: float,
        weights: torch.Tensor | None, kernel_dtype: torch.dtype, target_dtype: torch.dtype) -> torch.Tensor:
    """The loss of `op` on emb in `kernel_dtype`, target and weights in `target_dtype`, returned in emb's dtype."""
    e = emb.to(kernel_dtype).contiguous()
    t = target.to(target_dtype).contiguous()
    w = None if weights is None else weights.to(target_dtype).contiguous()
    loss, _, _ = op(e, t, w, transform == "tanh", float(scale))
    return loss.to(emb.dtype)
