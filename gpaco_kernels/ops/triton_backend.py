"""Backend "triton": the GPU kernels of gpaco_kernels/triton/paco.py behind the op's autograd Function.

Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before gpaco_kernels was imported (the
same kernel source, interpreted: how this project tests the kernels on machines without a GPU). Inputs may be
float32, bfloat16 or float16 (accumulated in float32); float64 is left to the cpu and torch backends.
"""

from __future__ import annotations

import torch

from .spec import ContrastInputs, LossConfig

NAME = "triton"

try:
    from ..triton import paco as _kernels

    _IMPORT_ERROR = None
except Exception as exc:  # no triton, or a triton that cannot load here
    _kernels, _IMPORT_ERROR = None, exc


def availability():
    if _IMPORT_ERROR is not None:
        return f"triton could not be imported ({_IMPORT_ERROR}); install it with `pip install triton`"
    return None


def device_unsupported(device_type: str):
    if device_type != "cuda" and not _kernels.INTERPRET:
        return (
            "the kernels need CUDA tensors; on a machine without a GPU they run only under the interpreter "
            "(TRITON_INTERPRET=1 set before gpaco_kernels is imported)"
        )
    return None


def _check_inputs(x: ContrastInputs):
    # The device was checked when the backend was resolved (device_unsupported).
    if x.features.dtype == torch.float64:
        raise ValueError(
            "backend='triton' takes float32, bfloat16 or float16 features, got float64; "
            "use backend='cpu' or 'torch' for float64"
        )
    dim = x.features.shape[1]
    if dim > _kernels.MAX_DIM:
        raise ValueError(f"backend='triton' supports feature dims up to {_kernels.MAX_DIM}, got D = {dim}")


def forward(x: ContrastInputs, cfg: LossConfig):
    _check_inputs(x)
    return _kernels.paco_fwd(x, cfg)


def backward(x: ContrastInputs, cfg: LossConfig, lse, pos, grad_loss, need_features, need_logits, need_centers):
    return _kernels.paco_bwd(x, cfg, lse, pos, grad_loss, need_features, need_logits, need_centers)
