"""Backend "cpu": the C++ kernels of csrc/ (custom ops torch.ops.gpaco.paco_forward / paco_backward).

Importing this module never fails: when the extension gpaco_kernels._C is missing or broken, availability() says
why and how to build it, and "auto" falls back to the torch backend. The ops get a fake (meta) implementation and
an autograd formula here, so they work under torch.compile and torch.library.opcheck.
"""

from __future__ import annotations

import torch

from .spec import ContrastInputs, LossConfig

NAME = "cpu"

try:
    from .. import _C  # noqa: F401  (loading it registers torch.ops.gpaco.*)

    _IMPORT_ERROR = None
except Exception as exc:  # missing, built for another torch, or broken: never break `import gpaco_kernels`
    _IMPORT_ERROR = exc

BUILD_HINT = (
    "build the C++ extension from a source checkout with `pip install --no-build-isolation -e .` "
    "(needs a C++ compiler with OpenMP and the torch you run with)"
)


def availability():
    if _IMPORT_ERROR is not None:
        return f"the C++ extension gpaco_kernels._C could not be loaded ({_IMPORT_ERROR}); {BUILD_HINT}"
    return None


def device_unsupported(device_type: str):
    if device_type != "cpu":
        return f"the C++ kernels take CPU tensors; on {device_type} use backend='triton' or 'torch'"
    return None


def _op_args(x: ContrastInputs, cfg: LossConfig):
    """Positional arguments shared by both ops (their schema's common part)."""
    return (
        x.features,
        x.labels,
        x.queue,
        x.queue_labels,
        x.center_logits,
        x.centers,
        x.center_bias,
        cfg.num_anchors,
        cfg.temperature,
        cfg.center_temperature,
        cfg.base_temperature,
        cfg.alpha,
        cfg.beta,
        cfg.gamma,
        cfg.label_smoothing,
        cfg.exclude_positive_class,
        cfg.ignore_index,
        cfg.batch_columns,
        cfg.lse_eps,
    )


_N_TENSORS = 7  # _op_args starts with the 7 tensors of ContrastInputs (optional ones may be None)
_N_COMMON = 19  # all _op_args entries; paco_forward takes one more (unit_gradients)


def per_anchor_loss(x: ContrastInputs, cfg: LossConfig) -> torch.Tensor:
    """Per-anchor loss (A,). Half inputs run in float32 (the cast is differentiable, so gradients come back in the
    input dtype)."""
    if x.features.dtype in (torch.float16, torch.bfloat16):
        x = ContrastInputs(
            *(t.float() if t is not None and t.is_floating_point() else t for t in _fields(x)),
        )
    grads_wanted = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x.features, x.center_logits, x.centers)
    )
    # With 'mean' or 'sum' every anchor receives the same upstream gradient, so the forward sweep can produce the
    # gradients for an upstream gradient of 1 at almost no extra cost (the row's lse is known while its logits are
    # still in cache); the backward then only scales them. With 'none' the backward sweeps again.
    unit = grads_wanted and cfg.reduced
    return torch.ops.gpaco.paco_forward(*_op_args(x, cfg), unit)[0]


def _fields(x: ContrastInputs):
    return (x.features, x.labels, x.queue, x.queue_labels, x.center_logits, x.centers, x.center_bias)


def _register():
    @torch.library.register_fake("gpaco::paco_forward")
    def _(features, labels, queue, queue_labels, center_logits, centers, center_bias, num_anchors, *rest):
        unit = rest[-1]
        per_anchor = features.new_empty((num_anchors,))

        def grad_like(t):
            return features.new_empty(t.shape) if unit and t is not None else features.new_empty((0,))

        return (
            per_anchor,
            per_anchor.new_empty((num_anchors,)),
            per_anchor.new_empty((num_anchors,)),
            grad_like(features),
            grad_like(center_logits),
            grad_like(centers),
        )

    @torch.library.register_fake("gpaco::paco_backward")
    def _(features, labels, queue, queue_labels, center_logits, centers, center_bias, *rest):
        need_features, need_logits, need_centers = rest[-3:]

        def grad_like(t, need):
            return features.new_empty(t.shape) if need and t is not None else features.new_empty((0,))

        return (
            grad_like(features, need_features),
            grad_like(center_logits, need_logits),
            grad_like(centers, need_centers),
        )

    def setup_context(ctx, inputs, output):
        *_, unit_f, unit_s, unit_w = output
        ctx.scalars = inputs[_N_TENSORS:_N_COMMON]
        ctx.save_for_backward(*inputs[:_N_TENSORS], unit_f, unit_s, unit_w)

    def backward(ctx, grad_loss, *_grads_of_saved_outputs):
        *tensors, unit_f, unit_s, unit_w = ctx.saved_tensors
        need = ctx.needs_input_grad  # features, center_logits and centers are inputs 0, 4 and 5
        grad_f, grad_s, grad_w = torch.ops.gpaco.paco_backward(
            *tensors, *ctx.scalars, grad_loss, unit_f, unit_s, unit_w, need[0], need[4], need[5]
        )

        def maybe(grad, wanted):
            return grad if wanted and grad.numel() > 0 else None

        tensor_grads = (maybe(grad_f, need[0]), None, None, None, maybe(grad_s, need[4]), maybe(grad_w, need[5]), None)
        return tensor_grads + (None,) * (_N_COMMON + 1 - _N_TENSORS)

    torch.library.register_autograd("gpaco::paco_forward", backward, setup_context=setup_context)


if _IMPORT_ERROR is None:
    _register()
