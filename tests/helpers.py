"""Shared test helpers: a comparison that explains its failures, the backends CI must have, and the dtypes and
tolerances of each backend (gpaco_kernels.tolerances, the one table)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpaco_kernels.ops.dispatch import backend_unavailable_reason, device_unsupported_reason
from gpaco_kernels.tolerances import DTYPES, HALF, VS_FLOAT64, within  # noqa: F401  (re-exported for the tests)

# Every backend but the oracle, whether or not it loaded here: a missing one fails the tests that need it (see
# need_backend) instead of shrinking the suite.
BACKENDS = ("torch", "cpu", "triton")
# The backends the suite must be able to run. The README's install builds the C++ extension and installs triton, and
# conftest.py turns the Triton interpreter on, so by default all of them; set GPACO_EXPECT_BACKENDS (comma list) to
# run on a machine that deliberately lacks one (its tests are then skipped, saying why).
EXPECTED = tuple(b for b in os.environ.get("GPACO_EXPECT_BACKENDS", ",".join(BACKENDS)).split(",") if b)
# Where the Triton kernels run in this session: CPU tensors under the interpreter (CI), else CUDA tensors (compiled).
TRITON_DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


# What a test that needs CUDA says when it skips without it: the GPU run's rehearsal (tests/test_gpu_check.py) accepts
# this skip and no other.
NEEDS_CUDA = "needs a CUDA GPU"


def need_backend(backend: str, device: str = "cpu") -> None:
    """Fail when a backend this suite must have is missing (a broken install, not a reason to skip); skip, saying
    why, when it was deliberately left out (GPACO_EXPECT_BACKENDS), when the device is CUDA and there is none, or when
    the backend cannot run on this device type here (Triton on CPU tensors with the interpreter off)."""
    reason = backend_unavailable_reason(backend)
    if reason is not None:
        if backend in EXPECTED:
            pytest.fail(f"backend {backend!r} is expected here but unavailable: {reason}")
        pytest.skip(f"backend {backend!r} left out by GPACO_EXPECT_BACKENDS: {reason}")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"{NEEDS_CUDA} (backend {backend!r} on CUDA tensors)")
    reason = device_unsupported_reason(backend, device)
    if reason is not None:
        if device == "cpu" and backend in EXPECTED and TRITON_DEVICE == "cpu":
            pytest.fail(f"backend {backend!r} is expected to run on CPU tensors here: {reason}")
        pytest.skip(f"backend {backend!r} does not run on {device} tensors here: {reason}")


def backend_device(backend: str) -> str:
    """Where a backend's tests put their tensors this session: Triton's on TRITON_DEVICE, the others' on the CPU."""
    return TRITON_DEVICE if backend == "triton" else "cpu"


def to_device(value, device: str):
    """A tensor, or the tensors of a dict or list, on device (other values as they are)."""
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    return value.to(device) if torch.is_tensor(value) else value


# The GPU run's selection (scripts/gpu_check.sh: pytest -m gpu): tests that put tensors on CUDA when the interpreter is
# off. Every one of them passes or skips with NEEDS_CUDA on a machine without a GPU (tests/test_gpu_check.py).
GPU = pytest.mark.gpu


def backend_params(backends=BACKENDS):
    """Backends as params, triton's marked GPU (its tests put their tensors on TRITON_DEVICE: backend_device)."""
    return [pytest.param(b, marks=GPU) if b == "triton" else b for b in backends]


def on_devices(pairs):
    """(backend, dtype) pairs as (backend, dtype, device) params: every pair on the CPU (Triton's under the
    interpreter), and the backends that run on CUDA tensors (torch, triton) on CUDA too, marked GPU; without a GPU
    those skip (need_backend)."""
    params = [pytest.param(b, d, "cpu", id=f"{dtype_id((b, d))}-cpu") for b, d in pairs]
    params += [
        pytest.param(b, d, "cuda", id=f"{dtype_id((b, d))}-cuda", marks=GPU)
        for b, d in pairs
        if b in ("torch", "triton")
    ]
    return params


def backend_dtypes(backends=BACKENDS, half=True):
    """(backend, dtype) pairs: every dtype each backend accepts."""
    return [(b, d) for b in backends for d in DTYPES[b] if half or d not in HALF]


def dtype_id(pair) -> str:
    backend, dtype = pair
    return f"{backend}-{str(dtype)[6:]}"


def assert_close(actual, expected, *, atol, rtol, name="tensor"):
    """torch.testing-style check that reports how many elements mismatch, NaN/inf disagreements and the worst few
    indices, instead of a bare assert."""
    actual = torch.as_tensor(actual).detach().to(torch.float64).cpu()
    expected = torch.as_tensor(expected).detach().to(torch.float64).cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    nan_mismatch = torch.isnan(actual) != torch.isnan(expected)
    inf_mismatch = torch.isinf(actual) != torch.isinf(expected)
    diff = (actual - expected).abs()
    bad = (diff > atol + rtol * expected.abs()) | nan_mismatch | inf_mismatch
    bad &= ~(torch.isnan(actual) & torch.isnan(expected))
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        worst = [(tuple(i), actual[tuple(i)].item(), expected[tuple(i)].item()) for i in idx]
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} elements differ beyond atol={atol}, rtol={rtol}; "
            f"max abs diff {diff[~torch.isnan(diff)].max().item() if (~torch.isnan(diff)).any() else 'nan'}; "
            f"NaN mismatches {int(nan_mismatch.sum())}, inf mismatches {int(inf_mismatch.sum())}; "
            f"first (index, actual, expected): {worst}"
        )


def assert_within(got, truth, same_dtype_ref, backend, dtype, name="tensor"):
    """The tolerance table's two checks (vs float64, and vs the reference on the same half inputs)."""
    problems = within(got, truth, same_dtype_ref, backend, dtype)
    assert not problems, f"{name} ({backend}, {dtype}): " + "; ".join(problems)


def max_abs_err(actual, expected) -> float:
    return (actual.detach().double() - expected.detach().double()).abs().max().item() if actual.numel() else 0.0


# torchrun of this interpreter's environment, else the one on PATH: the drivers' two-process tests.
_TORCHRUN_HERE = Path(sys.executable).with_name("torchrun")
TORCHRUN = str(_TORCHRUN_HERE) if _TORCHRUN_HERE.exists() else shutil.which("torchrun")
needs_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")


def torchrun_two_gloo_processes(script: Path, port: int, args: list[str]) -> None:
    """Run a training driver as two gloo processes on this machine; fails with its stderr if it does not exit 0."""
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(port), str(script), *args]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # as a user runs them: no Triton interpreter
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def exception_chain(exc: BaseException) -> list[BaseException]:
    """exc and the exceptions it wraps, outermost first (torch._dynamo's BackendCompilerFailed.inner_exception and
    explicit causes)."""
    chain = [exc]
    while True:
        inner = getattr(chain[-1], "inner_exception", None) or chain[-1].__cause__
        if inner is None or any(inner is e for e in chain):
            return chain
        chain.append(inner)


def innermost_frame(exc: BaseException) -> str:
    """'file:line' where the innermost exception of a chain was raised: tells an expected refusal from a bug that
    raises the same kind of error elsewhere."""
    tb = exception_chain(exc)[-1].__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "<no traceback>" if tb is None else f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"


# What Triton's interpreter raises when it is asked to run a kernel on tensors without storage (a trace's).
INTERPRETER_REFUSAL = "Attempted to access the data pointer on an invalid python storage"


def assert_refused_by_the_interpreter(exc: BaseException) -> None:
    """The error a torch.compile trace meets at its first Triton launch under the interpreter (a kernel run on
    tensors without storage): a RuntimeError saying so, raised inside Triton's interpreter, not earlier in this
    package's host code (whose own data-pointer errors read alike)."""
    inner, where = exception_chain(exc)[-1], innermost_frame(exc)
    assert "triton/runtime/interpreter.py" in where.replace("\\", "/"), (
        f"refused at {where}, not by the interpreter: {exc!r}"
    )
    assert type(inner) is RuntimeError and INTERPRETER_REFUSAL in str(inner), f"{type(inner).__name__}: {inner}"
