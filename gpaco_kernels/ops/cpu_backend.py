"""Backend "cpu": the C++ kernels of csrc/ as the CPU implementation of the op (gpaco::cpu_forward / cpu_backward).

Importing this module never fails: when the extension gpaco_kernels._C is missing or broken, availability() says
why and how to build it, and "auto" falls back to the torch backend. The kernels take float32 and float64; half
inputs are computed in float32 inside the op (its outputs are in the compute dtype, its gradients in the input
dtype, as for every backend).

With 'mean' or 'sum' the forward is asked for the gradients of an upstream gradient of 1 (UNIT_GRADIENTS): a row's
lse is known while its logits are still in cache, so they cost one product less than a second sweep; the backward
then scales them when the upstream gradient is one value on every anchor, and sweeps again otherwise.
"""

from __future__ import annotations

import torch

from .op import define_backend_ops
from .spec import ContrastInputs, OpParams, anchor_scale, compute_dtype, finalize_loss, gradient_coefficients

NAME = "cpu"
UNIT_GRADIENTS = True

try:
    from .. import _C

    _IMPORT_ERROR = None
except Exception as exc:  # missing, built for another torch, or broken: never break `import gpaco_kernels`
    _C, _IMPORT_ERROR = None, exc

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


def _in_kernel_dtype(x: ContrastInputs) -> ContrastInputs:
    dtype = compute_dtype(x.features.dtype)
    return ContrastInputs(*(t.to(dtype) if t is not None and t.is_floating_point() else t for t in x.tensors()))


def _sweep(x: ContrastInputs, p: OpParams, coef=None, inv_pos=None, needs=(False, False, False)):
    return _C.sweep(
        *x.tensors(),
        p.num_anchors,
        p.temperature,
        p.center_temperature,
        p.alpha,
        p.beta_on,
        p.beta_off,
        p.gamma,
        p.exclude_positive_class,
        p.ignore_index,
        p.batch_columns,
        p.lse_eps,
        coef,
        inv_pos,
        *needs,
    )


def _forward(x: ContrastInputs, p: OpParams, unit_gradients: bool):
    xk = _in_kernel_dtype(x)
    anchor_labels = x.labels[: p.num_anchors]
    coef = None
    if unit_gradients:
        coef = anchor_scale(torch.ones(p.num_anchors, dtype=xk.features.dtype), anchor_labels, p)
    needs = (True, x.center_logits is not None, x.centers is not None)
    wl, lse, pos, *units = _sweep(xk, p, coef, None, needs)
    return (finalize_loss(wl, pos, lse, anchor_labels, p), lse, pos, *units)


def _backward(x: ContrastInputs, p: OpParams, lse, pos, grad_loss, units, needs):
    xk = _in_kernel_dtype(x)
    like = (x.features, x.center_logits, x.centers)
    needs = tuple(n and t is not None for n, t in zip(needs, like))
    g = grad_loss.to(xk.features.dtype)
    if units[0].numel() > 0 and bool((g == g[0]).all()):
        # Every anchor got the same upstream gradient ('mean', 'sum'): the forward's gradients, scaled.
        grads = tuple(u * g[0] if n else None for u, n in zip(units, needs))
    else:
        a, inv_pos = gradient_coefficients(g, pos, x.labels[: p.num_anchors], p)
        grads = _sweep(xk, p, a, inv_pos, needs)[3:]
        grads = tuple(gr if n else None for gr, n in zip(grads, needs))
    return tuple(lse.new_empty((0,)) if gr is None else gr.to(t.dtype).contiguous() for gr, t in zip(grads, like))


OPS = define_backend_ops(NAME, _forward, _backward, device_types="cpu") if _C is not None else None
