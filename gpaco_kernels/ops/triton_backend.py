"""Backend "triton": the GPU kernels of gpaco_kernels/triton/ as the op gpaco::triton_forward / triton_backward,
registered with torch.library.triton_op so that torch.compile sees the kernels inside.

Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before gpaco_kernels was imported (the
same kernel source, interpreted: how this project tests the kernels on machines without a GPU). Inputs may be
float32, bfloat16 or float16 (accumulated in float32); float64 is left to the cpu and torch backends.
"""

from __future__ import annotations

import torch

from .op import _refuse_double_backward, check_inputs, define_backend_ops, no_unit_gradients
from .spec import ContrastInputs, OpParams

NAME = "triton"

try:
    from torch.library import triton_op

    from ..triton import launch as _launch

    _IMPORT_ERROR = None
except Exception as exc:  # no triton, or a triton that cannot load here
    _launch, _IMPORT_ERROR = None, exc


def availability():
    if _IMPORT_ERROR is not None:
        return f"triton could not be imported ({_IMPORT_ERROR}); install it with `pip install triton`"
    return None


def device_unsupported(device_type: str):
    if device_type != "cuda" and not _launch.INTERPRET:
        return (
            "the kernels need CUDA tensors; on a machine without a GPU they run only under the interpreter "
            "(TRITON_INTERPRET=1 set before gpaco_kernels is imported)"
        )
    return None


def _launcher(launch) -> dict:
    # None: the launchers' default (wrap_triton, inside the triton_op)
    return {} if launch is None else {"launch": launch}


def _forward(x: ContrastInputs, p: OpParams, unit_gradients: bool, launch=None):
    if unit_gradients:
        raise ValueError("the triton backend does not compute unit gradients in its forward")
    loss, lse, pos, counted = _launch.paco_fwd(x, p, **_launcher(launch))
    return loss, lse, pos, counted, *no_unit_gradients(lse)


def _backward(x: ContrastInputs, p: OpParams, lse, pos, counted, grad_loss, units, needs, launch=None):
    needs = (needs[0], needs[1] and x.center_logits is not None, needs[2] and x.centers is not None)
    grads = _launch.paco_bwd(
        x, p, lse, pos, counted, grad_loss, needs, **({} if launch is None else {"launch": launch})
    )
    return tuple(lse.new_empty((0,)) if g is None else g for g in grads)


OPS = define_backend_ops(NAME, _forward, _backward, factory=triton_op) if _launch is not None else None


class _EagerLoss(torch.autograd.Function):
    """The op in eager mode without the dispatcher: the same launchers, kernels launched directly (no
    torch.library dispatch, no wrap_triton tracing), with the op's autograd formula. torch.compile goes through OPS."""

    @staticmethod
    def forward(ctx, features, labels, queue, queue_labels, center_logits, centers, center_bias, p):
        x = ContrastInputs(features, labels, queue, queue_labels, center_logits, centers, center_bias)
        check_inputs(x, p)
        loss, lse, pos, counted, *_ = _forward(x, p, False, launch=_launch.direct)
        ctx.p = p
        ctx.save_for_backward(features, labels, queue, queue_labels, center_logits, centers, center_bias, lse, pos,
                              counted)  # fmt: skip
        ctx.mark_non_differentiable(lse, pos, counted)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        *tensors, lse, pos, counted = ctx.saved_tensors
        x = ContrastInputs(*tensors)
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[4], ctx.needs_input_grad[5])
        grads = _backward(x, ctx.p, lse, pos, counted, grad_loss, (), needs, launch=_launch.direct)
        if torch.is_grad_enabled():  # create_graph=True: the gradients are marked so that differentiating them raises
            grads = _NoDoubleBackward.apply(*tensors, *grads)
        features, logits, centers = (g if need else None for g, need in zip(grads, needs))
        return features, None, None, None, logits, centers, None, None


class _NoDoubleBackward(torch.autograd.Function):
    """Identity on the gradients, made a function of the op's inputs (so that they require grad under create_graph,
    as the op's backward outputs do); its backward refuses double backward with the op's message."""

    @staticmethod
    def forward(ctx, *inputs_and_grads):
        return tuple(g.view_as(g) for g in inputs_and_grads[-3:])

    @staticmethod
    def backward(ctx, *grads):
        return _refuse_double_backward(NAME)(ctx, *grads)


def eager_loss(x: ContrastInputs, p: OpParams, grads_wanted: bool) -> torch.Tensor:
    """The loss of the op (ops/op.py) in eager mode, its kernels launched directly: what dispatch.loss calls
    outside torch.compile. Double backward raises, as the op's does."""
    return _EagerLoss.apply(*x.tensors(), p)
