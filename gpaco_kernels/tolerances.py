"""How close each backend must come to the float64 reference, by backend and dtype: one table for the test suite
and `python -m gpaco_kernels.selfcheck`.

Two checks per result (values and every gradient), with scale = max |float64 result| (1 where that is 0), so that
a gradient of size 1e-5 is held to the same relative accuracy as one of size 1, plus two steps of the dtype's
subnormal spacing (a result that small cannot be more exact in that dtype):

- against float64 (dtype-derived): |backend - truth| <= 2 |reference in the dtype - truth| + atol * scale
  + rtol * |truth|. The reference computed on the same rounded inputs shows what the dtype costs by itself; atol/rtol
  add what the backend may cost on top (float32 accumulation order, half-precision products).
- against the reference run on the same half-precision inputs (tight; half dtypes only): the rounding of the inputs
  is then shared, and what is left is the backend's own arithmetic: for the torch and cpu backends float32
  accumulation and the final rounding to the dtype (a unit in the last place), for triton also the gradient factor
  rounded to the dtype before its tensor-core product (2^-8 relative in bfloat16, 2^-11 in float16).
"""

from __future__ import annotations

import torch

# dtype -> (atol, rtol) against the float64 truth, every backend.
VS_FLOAT64 = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (4e-3, 4e-3),
}


def _units(dtype, n: float) -> tuple[float, float]:
    """(atol, rtol) of n units of the dtype's rounding (2^-8 in bfloat16, 2^-11 in float16)."""
    u = torch.finfo(dtype).eps / 2
    return (n * u, n * u)


# (backend, dtype) -> (atol, rtol) against the reference on the same half-precision inputs, in units of the dtype's
# rounding, the same number for both half dtypes. torch and cpu: 2 units (float32 accumulation, one final rounding).
# triton: 6 units, because the gradient factor H is rounded to the dtype before each tensor-core product and the
# gradients are sums of terms of both signs (features after normalize lose their radial part, a cancellation). The
# worst case seen: normalize+centers dfeatures, 2.8 units in float16 (interpreter, CPU) and 4.3 units in bfloat16
# (compiled, H200); 3.8 units, the earlier bfloat16 bound, failed there.
VS_SAME_INPUTS = {
    ("torch", torch.bfloat16): _units(torch.bfloat16, 2),
    ("torch", torch.float16): _units(torch.float16, 2),
    ("cpu", torch.bfloat16): _units(torch.bfloat16, 2),
    ("cpu", torch.float16): _units(torch.float16, 2),
    ("triton", torch.bfloat16): _units(torch.bfloat16, 6),
    ("triton", torch.float16): _units(torch.float16, 6),
}

# The dtypes each backend accepts (float64 is not a Triton dtype: the torch and cpu backends cover it).
DTYPES = {
    "reference": (torch.float64, torch.float32, torch.bfloat16, torch.float16),
    "torch": (torch.float64, torch.float32, torch.bfloat16, torch.float16),
    "cpu": (torch.float64, torch.float32, torch.bfloat16, torch.float16),
    "triton": (torch.float32, torch.bfloat16, torch.float16),
}

HALF = (torch.bfloat16, torch.float16)


def within(got: torch.Tensor, truth: torch.Tensor, same_dtype_ref: torch.Tensor, backend: str, dtype) -> list[str]:
    """The checks above for one result; returns what failed (empty when it passes)."""
    got, truth, ref = (t.detach().double().cpu() for t in (got, truth, same_dtype_ref))
    problems = []
    if got.shape != truth.shape:
        return [f"shape {tuple(got.shape)} != {tuple(truth.shape)}"]
    if not torch.isfinite(got).all():
        problems.append("non-finite values where the float64 reference is finite")
        return problems
    scale = truth.abs().max().item() if truth.numel() else 0.0
    scale = scale if scale > 0 else 1.0
    floor = 2 * torch.finfo(dtype).eps * torch.finfo(dtype).tiny  # spacing of the dtype's subnormal numbers
    atol, rtol = VS_FLOAT64[dtype]
    own = (ref - truth).abs().max().item() if truth.numel() else 0.0
    err = (got - truth).abs() - rtol * truth.abs()
    worst = err.max().item() if truth.numel() else 0.0
    if worst > 2 * own + atol * scale + floor:
        problems.append(f"vs float64: off by {worst:.3g} > 2 x {own:.3g} (the dtype's own error) + {atol * scale:.3g}")
    if dtype in HALF:
        atol, rtol = VS_SAME_INPUTS[(backend, dtype)]
        err = ((got - ref).abs() - rtol * ref.abs()).max().item() if truth.numel() else 0.0
        if err > atol * scale + floor:
            problems.append(
                f"vs the reference on the same {dtype} inputs: off by {err:.3g} > {atol * scale + floor:.3g}"
            )
    return problems
