"""The op: one autograd Function in front of every non-reference backend.

Its output is the per-anchor loss (A,), so reductions ('mean', 'sum', 'none') happen outside, in autograd, and the
backward always receives one upstream gradient per anchor: a backend never assumes the upstream gradient is a
scalar. Forward saves the inputs and the per-anchor (lse, P); nothing of size A x M.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .dispatch import load_backend
from .spec import ContrastInputs, LossConfig


class ParametricContrastiveFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, backend_name, cfg, features, labels, queue, queue_labels, center_logits, centers, center_bias):
        x = ContrastInputs(features, labels, queue, queue_labels, center_logits, centers, center_bias)
        loss, lse, pos = load_backend(backend_name).forward(x, cfg)
        ctx.backend_name, ctx.cfg = backend_name, cfg
        ctx.save_for_backward(features, labels, queue, queue_labels, center_logits, centers, center_bias, lse, pos)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        features, labels, queue, queue_labels, center_logits, centers, center_bias, lse, pos = ctx.saved_tensors
        x = ContrastInputs(features, labels, queue, queue_labels, center_logits, centers, center_bias)
        need = ctx.needs_input_grad
        grad_features, grad_logits, grad_centers = load_backend(ctx.backend_name).backward(
            x, ctx.cfg, lse, pos, grad_loss, need[2], need[6], need[7]
        )

        def cast(grad, like):
            return None if grad is None else grad.to(like.dtype)

        return (
            None,
            None,
            cast(grad_features, features),
            None,
            None,
            None,
            cast(grad_logits, center_logits),
            cast(grad_centers, centers),
            None,
        )


def per_anchor_loss(x: ContrastInputs, cfg: LossConfig, backend_name: str) -> torch.Tensor:
    """Loss of each anchor (A,) in the compute dtype, through the named (already resolved) backend."""
    backend = load_backend(backend_name)
    if hasattr(backend, "per_anchor_loss"):
        return backend.per_anchor_loss(x, cfg)
    return ParametricContrastiveFunction.apply(
        backend_name, cfg, x.features, x.labels, x.queue, x.queue_labels, x.center_logits, x.centers, x.center_bias
    )
