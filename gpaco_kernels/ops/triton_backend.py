"""Backend "triton": the GPU kernels of gpaco_kernels/triton/ as the op gpaco::triton_forward / triton_backward,
registered with torch.library.triton_op so that torch.compile sees the kernels inside.

Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before gpaco_kernels was imported (the
same kernel source, interpreted: how this project tests the kernels on machines without a GPU). Inputs may be
float32, bfloat16 or float16 (accumulated in float32); float64 is left to the cpu and torch backends.
"""

from __future__ import annotations

import functools

from .op import define_backend_ops, define_eager, no_unit_gradients
from .spec import ContrastInputs, OpParams

NAME = "triton"

try:
    from ..triton import requirements

    requirements.check()  # before the kernels are imported: an old Triton fails there with less clear errors
    requirements.check_interpreter()
    from torch.library import triton_op

    from ..triton import launch as _launch

    _IMPORT_ERROR = None
except Exception as exc:  # no triton, one below the floor, or one that cannot load here
    _launch, _IMPORT_ERROR = None, exc


def availability():
    if isinstance(_IMPORT_ERROR, requirements.UnsupportedVersion):
        return str(_IMPORT_ERROR)
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


def inputs_unsupported(dtype, dim):
    """Why the kernels cannot take features of this dtype and feature dim, or None (launch.check_supported)."""
    return _launch.unsupported(dtype, dim)


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
    grads = _launch.paco_bwd(x, p, lse, pos, counted, grad_loss, needs, **_launcher(launch))
    return tuple(lse.new_empty((0,)) if g is None else g for g in grads)


OPS = define_backend_ops(NAME, _forward, _backward, factory=triton_op) if _launch is not None else None


# Eager mode: the kernels launched directly (ops/op.py define_eager); torch.compile sees them through OPS.
EAGER = (
    define_eager(
        NAME,
        functools.partial(_forward, launch=_launch.direct),
        functools.partial(_backward, launch=_launch.direct),
        device_types=("cuda", "cpu"),
    )
    if _launch is not None
    else None
)
