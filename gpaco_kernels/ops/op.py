"""The op, registered once with torch.library: one schema, one fake implementation, one autograd formula.

Every compiled or streaming backend ("torch", "cpu", "triton") implements the same pair of operators

    gpaco::<backend>_forward   inputs -> (loss, lse, pos, counted, unit_grad_features, unit_grad_center_logits,
                               unit_grad_centers)
    gpaco::<backend>_backward  inputs, lse, pos, counted, grad_loss, unit grads, needs -> (grad_features,
                               grad_center_logits, grad_centers)

with one schema, the fake implementation `_fake_forward` / `_fake_backward` and the autograd formula
`_setup_context` / `_backward_formula`, all written once here and registered on each backend's pair by
`define_backend_ops` (the schema is inferred from the one annotated argument list, `_INPUTS`). A backend supplies
only its two implementations. Its forward returns the loss, reduced as the `reduction` scalar says (the (A,)
per-anchor losses, their sum or their mean over the counted anchors) in the dtype of the features, normalizes the
inputs itself when `normalize` is set (so that a step is the op's launches, not a chain of small ATen ops around it),
and saves (lse, P) per anchor and the number of counted anchors, nothing of size A x M. The "unit" gradients are the
gradients for an upstream gradient of 1 on every anchor, which a backend that learns each row's lse while the row is
still in cache can produce in the forward for almost nothing (the cpu backend with 'mean' or 'sum'); other backends
are never asked for them. `define_eager` (below) gives each backend an eager path through the same two
implementations that skips the dispatcher; torch.compile always sees these operators.

Double backward is refused with a clear error on every backend but "reference" (plain autograd, the oracle).
"""

# No `from __future__ import annotations`: torch.library reads the schema from the real annotations below.
import inspect
from typing import Optional

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.library import custom_op

from .spec import ContrastInputs, OpParams, compute_dtype

N_TENSORS = 7
N_SCALARS = 15
_GRAD_INPUTS = {"features": 0, "center_logits": 4, "centers": 5}  # inputs that take a gradient


def check_inputs(x: ContrastInputs, p: OpParams) -> None:
    """Shapes and dtypes the op requires, with torch._check so that it also holds for fake tensors. The public
    functions check the user's arguments (naming them) before this; this guards direct calls of the op."""
    f = x.features
    torch._check(f.dim() == 2, lambda: f"features must be (N, D), got {tuple(f.shape)}")
    N, D = f.shape
    torch._check(x.labels.dim() == 1 and x.labels.shape[0] == N, lambda: f"labels must be ({N},)")
    torch._check(x.labels.dtype == torch.int64, lambda: f"labels must be int64, got {x.labels.dtype}")
    torch._check(1 <= p.num_anchors <= N, lambda: f"num_anchors must be in [1, {N}], got {p.num_anchors}")
    torch._check((x.queue is None) == (x.queue_labels is None), lambda: "queue and queue_labels go together")
    if x.queue is not None:
        K = x.queue.shape[0]
        torch._check(x.queue.dim() == 2 and x.queue.shape[1] == D, lambda: f"queue must be (K, {D})")
        torch._check(x.queue_labels.shape == (K,), lambda: f"queue_labels must be ({K},)")
        torch._check(x.queue_labels.dtype == torch.int64, lambda: "queue_labels must be int64")
    torch._check(x.center_logits is None or x.centers is None, lambda: "center_logits or centers, not both")
    C = x.num_classes
    if x.center_logits is not None:
        torch._check(
            x.center_logits.dim() == 2 and x.center_logits.shape[0] == p.num_anchors,
            lambda: f"center_logits must be (num_anchors={p.num_anchors}, C)",
        )
    if x.centers is not None:
        torch._check(x.centers.dim() == 2 and x.centers.shape[1] == D, lambda: f"centers must be (C, {D})")
    if x.center_bias is not None:
        torch._check(x.center_bias.shape == (C,), lambda: f"center_bias must be ({C},)")
    for name, t in (("queue", x.queue), ("center_logits", x.center_logits), ("centers", x.centers)):
        if t is not None:
            torch._check(t.dtype == f.dtype, lambda name=name: f"{name} must have the dtype of features ({f.dtype})")


def _empty(features: torch.Tensor) -> torch.Tensor:
    # Schemas cannot return None: an absent gradient is a (0,) tensor.
    return features.new_empty((0,), dtype=compute_dtype(features.dtype))


def no_unit_gradients(like: torch.Tensor) -> tuple:
    """The forward's three unit-gradient outputs when it computes none: distinct (0,) tensors (outputs may not alias
    each other; new_empty launches nothing, a clone of an empty tensor still does)."""
    return tuple(like.new_empty((0,)) for _ in range(3))


def loss_shape(p: OpParams) -> tuple:
    return (p.num_anchors,) if p.reduction == "none" else ()


def _fake_forward(x: ContrastInputs, p: OpParams, unit: bool):
    torch._check(p.reduction in ("none", "sum", "mean"), lambda: f"reduction must be none, sum or mean: {p.reduction}")
    stat = x.features.new_empty((p.num_anchors,), dtype=compute_dtype(x.features.dtype))
    loss = x.features.new_empty(loss_shape(p))
    counted = stat.new_empty((1,))

    def unit_grad(t):
        return t.new_empty(t.shape, dtype=compute_dtype(t.dtype)) if unit and t is not None else _empty(x.features)

    units = (unit_grad(x.features), unit_grad(x.center_logits), unit_grad(x.centers))
    return loss, stat, stat.new_empty(stat.shape), counted, *units


def _fake_backward(x: ContrastInputs, p: OpParams, lse, pos, counted, grad_loss, units, needs):
    shape = loss_shape(p)
    torch._check(tuple(grad_loss.shape) == shape, lambda: f"grad_loss must have shape {shape}")

    def grad(t, need):
        # an absent gradient is its own (0,) tensor: outputs of an op may not alias each other (the backends return
        # distinct ones, and the fake implementation must say the same)
        if need and t is not None:
            return torch.empty_like(t, memory_format=torch.contiguous_format)
        return _empty(x.features)

    return tuple(grad(t, need) for t, need in zip((x.features, x.center_logits, x.centers), needs))


def _setup_context(ctx, inputs, output):
    _, lse, pos, counted, *units = output
    ctx.scalars = inputs[N_TENSORS : N_TENSORS + N_SCALARS]
    ctx.save_for_backward(*inputs[:N_TENSORS], lse, pos, counted, *units)


def _backward_formula(backward_op):
    def backward(ctx, grad_loss, *_grads_of_statistics):
        *tensors, lse, pos, counted, unit_f, unit_s, unit_w = ctx.saved_tensors
        need = [ctx.needs_input_grad[i] for i in _GRAD_INPUTS.values()]
        grad_loss = grad_loss.contiguous()
        grads = backward_op(*tensors, *ctx.scalars, lse, pos, counted, grad_loss, unit_f, unit_s, unit_w, *need)
        out = [None] * (N_TENSORS + N_SCALARS + 1)
        for (_, index), wanted, g in zip(_GRAD_INPUTS.items(), need, grads):
            out[index] = g if wanted else None
        return tuple(out)

    return backward


def _refuse_double_backward(backend: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"gpaco_kernels: double backward is not supported by backend={backend!r} (its gradient was "
            "differentiated again, e.g. torch.autograd.grad(..., create_graph=True) followed by a second grad). "
            "backend='reference' supports it."
        )

    return backward


def _no_context(ctx, inputs, output):
    return None


# The one signature of every backend's operators; torch.library infers the schema from these annotations.
_INPUTS = [
    ("features", Tensor), ("labels", Tensor), ("queue", Optional[Tensor]), ("queue_labels", Optional[Tensor]),
    ("center_logits", Optional[Tensor]), ("centers", Optional[Tensor]), ("center_bias", Optional[Tensor]),
    ("num_anchors", int), ("temperature", float), ("center_temperature", float), ("alpha", float),
    ("beta_on", float), ("beta_off", float), ("gamma", float), ("loss_scale", float),
    ("exclude_positive_class", bool), ("ignore_index", int), ("batch_columns", bool), ("lse_eps", float),
    ("batch_column_grad", bool), ("normalize", bool), ("reduction", str),
]  # fmt: skip
_FORWARD = (_INPUTS + [("unit_gradients", bool)], tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor])
_BACKWARD = (
    _INPUTS
    + [(name, Tensor) for name in ("lse", "pos", "counted", "grad_loss")]
    + [(name, Tensor) for name in ("unit_grad_features", "unit_grad_center_logits", "unit_grad_centers")]
    + [(name, bool) for name in ("need_features", "need_center_logits", "need_centers")],
    tuple[Tensor, Tensor, Tensor],
)


def _with_signature(fn, signature):
    params, returns = signature
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    fn.__signature__ = inspect.Signature(
        [inspect.Parameter(name, kind, annotation=annotation) for name, annotation in params],
        return_annotation=returns,
    )
    return fn


def _unpack(args):
    x = ContrastInputs(*args[:N_TENSORS])
    p = OpParams(*args[N_TENSORS : N_TENSORS + N_SCALARS])
    check_inputs(x, p)
    return x, p, args[N_TENSORS + N_SCALARS :]


def _forward_signature(impl):
    """impl(x, p, unit_gradients) as a function of the forward operator's arguments:
    -> (loss, lse, pos, counted, unit_grad_features, unit_grad_center_logits, unit_grad_centers)."""

    def forward(*args):
        x, p, (unit_gradients,) = _unpack(args)
        return impl(x, p, unit_gradients)

    return _with_signature(forward, _FORWARD)


def _backward_signature(impl):
    """impl(x, p, lse, pos, counted, grad_loss, unit_grads, needs) as a function of the backward operator's
    arguments: -> (grad_features, grad_center_logits, grad_centers)."""

    def backward(*args):
        x, p, (lse, pos, counted, grad_loss, *rest) = _unpack(args)
        return impl(x, p, lse, pos, counted, grad_loss, tuple(rest[:3]), tuple(rest[3:]))

    return _with_signature(backward, _BACKWARD)


def define_backend_ops(backend: str, forward_impl, backward_impl, *, device_types=None, factory=None):
    """Register gpaco::<backend>_forward / _backward with the shared schema, fake and autograd formula.

    forward_impl(x, p, unit_gradients) -> the six outputs of the forward signature (contiguous, dtypes as
    _fake_forward);
    backward_impl(x, p, lse, pos, counted, grad_loss, unit_grads, needs) -> the three gradients (as _fake_backward).
    factory: torch.library.custom_op (default; opaque to torch.compile) or torch.library.triton_op (torch.compile
    sees the Triton kernels inside). Returns (forward op, backward op)."""
    options = {} if factory is not None else {"device_types": device_types}
    factory = factory or custom_op
    forward_op = factory(f"gpaco::{backend}_forward", _forward_signature(forward_impl), mutates_args=(), **options)
    backward_op = factory(f"gpaco::{backend}_backward", _backward_signature(backward_impl), mutates_args=(), **options)
    forward_op.register_fake(_forward_signature(_fake_forward))
    backward_op.register_fake(_backward_signature(_fake_backward))
    forward_op.register_autograd(_backward_formula(backward_op), setup_context=_setup_context)
    backward_op.register_autograd(_refuse_double_backward(backend), setup_context=_no_context)
    return forward_op, backward_op


def call_forward(forward_op, x: ContrastInputs, p: OpParams, unit_gradients: bool):
    return forward_op(*x.tensors(), *p.astuple(), unit_gradients)


# --- the eager path -----------------------------------------------------------------------------------------------
# The dispatcher's route through a custom_op with register_autograd costs a few hundred microseconds of Python per
# step in this torch (argument defaults re-read from the schema on every call, two redispatches, the autograd
# wrapper), and a triton_op adds wrap_triton's tracing on every launch: at small and medium sizes more than the
# kernels. In eager mode the loss therefore calls the same two implementations through one autograd.Function with
# the same formula as _setup_context / _backward_formula; torch.compile, opcheck and fake tensors always take the
# operators above.


def define_eager(backend: str, forward_impl, backward_impl, device_types=None):
    """The loss through forward_impl / backward_impl without the dispatcher: a function (x, p, unit_gradients) ->
    the loss, differentiable as the operators are (double backward refused). device_types: where the
    implementations run on real tensors (None: any device torch runs, meta included)."""

    class _NoDoubleBackward(torch.autograd.Function):
        """Identity on the gradients, made a function of the op's inputs (so that under create_graph=True they
        require grad, as the backward operator's outputs do); differentiating them raises."""

        @staticmethod
        def forward(ctx, *inputs_and_grads):
            return tuple(g.view_as(g) for g in inputs_and_grads[-3:])

        backward = staticmethod(_refuse_double_backward(backend))

    class _Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, p, unit_gradients, *tensors):
            # No check_inputs: this path is entered only from ops.dispatch.loss, on inputs the public functions have
            # checked (naming the user's arguments); the operators check direct calls.
            x = ContrastInputs(*tensors)
            loss, lse, pos, counted, *units = forward_impl(x, p, unit_gradients)
            ctx.p = p
            ctx.save_for_backward(*tensors, lse, pos, counted, *units)
            return loss

        @staticmethod
        def backward(ctx, grad_loss):
            *tensors, lse, pos, counted, unit_f, unit_s, unit_w = ctx.saved_tensors
            need = [ctx.needs_input_grad[2 + i] for i in _GRAD_INPUTS.values()]
            x = ContrastInputs(*tensors)
            grads = backward_impl(x, ctx.p, lse, pos, counted, grad_loss.contiguous(), (unit_f, unit_s, unit_w), need)
            if torch.is_grad_enabled():  # create_graph=True
                grads = _NoDoubleBackward.apply(*tensors, *grads)
            out = [None] * (2 + N_TENSORS)
            for index, wanted, g in zip(_GRAD_INPUTS.values(), need, grads):
                out[2 + index] = g if wanted else None
            return tuple(out)

    def loss(x: ContrastInputs, p: OpParams, unit_gradients: bool):
        """The loss, or None when these tensors must take the operators (fake tensors, another device)."""
        f = x.features
        if is_fake(f) or (device_types is not None and f.device.type not in device_types):
            return None
        return _Eager.apply(p, unit_gradients, *x.tensors())

    return loss
