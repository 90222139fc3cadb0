"""Backend "cpu": the C++ kernels of csrc/ as the CPU implementation of the op (gpaco::cpu_forward / cpu_backward).

Importing this module never fails: when the extension gpaco_kernels._C is missing or broken, availability() says
why and how to build it, and "auto" falls back to the torch backend. The kernels take float32, float64, bfloat16 and
float16. Half inputs are multiplied in their dtype with float32 accumulation where MKL's half GEMMs serve this CPU
(`half_gemm_mode`), otherwise upcast to float32 once; the row pass (max, exp, sums, gradient) is float32 either way.
The op's outputs are in the compute dtype, its gradients in the input dtype, as for every backend.

With 'mean' or 'sum' the forward is asked for the gradients of an upstream gradient of 1 (UNIT_GRADIENTS): a row's
lse is known while its logits are still in cache, so they cost one product less than a second sweep; the backward
then scales them by the one upstream gradient; with 'none' it sweeps again.
"""

from __future__ import annotations

import os

import torch

from .op import define_backend_ops, define_eager
from .spec import ContrastInputs, OpParams

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


# CPU features that make MKL's half-precision GEMMs faster than float32 ones: AMX tiles or AVX-512 dot products of
# that dtype. Without them MKL converts internally and was slower than float32 products on a Xeon with AVX-512 alone
# (the bfloat16 rows of the README's benchmark table, both paths measured), so upcasting is the better path there.
HALF_GEMM_FLAGS = {torch.bfloat16: ("amx_bf16", "avx512_bf16"), torch.float16: ("amx_fp16", "avx512_fp16")}


def cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def half_gemm_mode(dtype: torch.dtype) -> str:
    """How bfloat16 / float16 inputs are multiplied here: "mkl" (their own GEMM, float32 accumulation and output) where
    this torch provides MKL's and the CPU has the features above, else "float32" (the inputs upcast once). The row pass
    is float32 either way. GPACO_CPU_HALF_GEMM=mkl|float32 forces one (the tests run both)."""
    name = str(dtype).replace("torch.", "")
    available = _C is not None and _C.mkl_half_gemm(name)
    forced = os.environ.get("GPACO_CPU_HALF_GEMM")
    if forced is not None:
        if forced not in ("mkl", "float32"):
            raise ValueError(f"GPACO_CPU_HALF_GEMM must be 'mkl' or 'float32', got {forced!r}")
        if forced == "mkl" and not available:
            raise ValueError(f"GPACO_CPU_HALF_GEMM=mkl, but this torch does not provide MKL's {name} GEMM")
        return forced
    native = any(flag in _flags() for flag in HALF_GEMM_FLAGS[dtype])
    return "mkl" if available and native else "float32"


_FLAGS = None


def _flags() -> frozenset:
    global _FLAGS
    if _FLAGS is None:
        _FLAGS = cpu_flags()
    return _FLAGS


REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}  # the C++ entry points' reduction code


def _scalars(p: OpParams) -> tuple:
    """The op's scalars in the order of the C++ entry points (csrc/paco_op.cpp forward_op / backward_op)."""
    return (
        p.num_anchors, p.temperature, p.center_temperature, p.alpha, p.beta_on, p.beta_off, p.gamma, p.loss_scale,
        p.exclude_positive_class, p.ignore_index, p.batch_columns, p.lse_eps, p.batch_column_grad, p.normalize,
        REDUCTIONS[p.reduction],
    )  # fmt: skip


def _half_products(x: ContrastInputs) -> bool:
    return x.features.dtype in HALF_GEMM_FLAGS and half_gemm_mode(x.features.dtype) == "mkl"


# Each direction is one call into C++ (csrc/paco_op.cpp): the normalization, the sweep, the loss and its reduction
# (forward), the per-anchor coefficients and the normalization's backward (backward), as ops/spec.py states them.
def _forward(x: ContrastInputs, p: OpParams, unit_gradients: bool):
    return tuple(_C.forward(*x.tensors(), *_scalars(p), unit_gradients, _half_products(x)))


def _backward(x: ContrastInputs, p: OpParams, lse, pos, counted, grad_loss, units, needs):
    return tuple(_C.backward(*x.tensors(), *_scalars(p), lse, pos, counted, grad_loss, *units, *needs,
                             _half_products(x)))  # fmt: skip


OPS = define_backend_ops(NAME, _forward, _backward, device_types="cpu") if _C is not None else None
EAGER = define_eager(NAME, _forward, _backward, device_types=("cpu",)) if _C is not None else None
