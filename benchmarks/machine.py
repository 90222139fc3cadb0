"""What a benchmark record says about where it ran, and the GEMM peak it is compared with.

Every record carries the machine (CPU model and the flags that decide the kernels' paths, or the GPU), the thread
count, torch, the commit and the date. The GEMM peak is one large product timed in the same run, in the dtype and
with the routine the floor uses (`product_fn`): the share of it a provider reaches is what the tables report.
"""

from __future__ import annotations

import datetime
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

import torch

import gpaco_kernels as gk

ROOT = Path(__file__).resolve().parent.parent
# CPU flags that decide which paths the kernels take (vector width of the row pass, half-precision products).
FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    try:
        with open("/proc/cpuinfo") as fh:
            info = fh.read()
    except OSError:
        return platform.processor() or platform.machine(), []
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags = re.search(r"^flags\s*:\s*(.*)$", info, re.MULTILINE)
    present = set(flags.group(1).split()) if flags else set()
    return (model.group(1).strip() if model else platform.machine()), [f for f in FLAGS_THAT_MATTER if f in present]


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        status = ["git", "status", "--porcelain", "--untracked-files=no"]
        dirty = subprocess.run(status, capture_output=True, text=True, cwd=ROOT)
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


def facts(device: torch.device) -> dict:
    model, flags = cpu_model_and_flags()
    out = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        commit=commit(),
        device=device.type,
        cpu=model,
        cpu_flags=flags,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        gpaco_kernels=gk.__version__,
        python=platform.python_version(),
    )
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def slug(machine: dict) -> str:
    """Folder name of a machine's results: the GPU, or the CPU model and thread count."""
    name = machine.get("gpu") or f"{machine['cpu']} {machine['threads']}t"
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("(r)", "").replace("(tm)", "")).strip("-")


def product_fn(dtype: torch.dtype, device: torch.device):
    """(name, mm, operand dtype) of the products the fused backend runs for this dtype here, mm(a, ta, b, tb) =
    op(a) op(b): on CPU the cpu backend's own routine (MKL's half GEMM where it uses it, else float32 from operands
    converted beforehand); on CUDA torch's matmul in the dtype."""

    def torch_mm(a, ta, b, tb):
        return (a.T if ta else a) @ (b.T if tb else b)

    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        from gpaco_kernels.ops import cpu_backend

        if cpu_backend.half_gemm_mode(dtype) == "mkl":

            def mkl_mm(a, ta, b, tb):
                out = torch.empty(a.shape[1] if ta else a.shape[0], b.shape[0] if tb else b.shape[1])
                cpu_backend._C.product(out, a, ta, b, tb, 1.0, 0.0)
                return out

            return f"MKL {str(dtype)[6:]} GEMM, float32 accumulation", mkl_mm, dtype
        return "float32 GEMM (the inputs upcast)", torch_mm, torch.float32
    return f"{str(dtype)[6:]} matmul", torch_mm, dtype


def variant(dtype: torch.dtype, device: torch.device) -> str:
    """How the fused CPU backend multiplies this dtype here ('mkl' or 'float32' for half inputs; '' otherwise): runs
    of one dtype with different paths are different table rows."""
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        from gpaco_kernels.ops import cpu_backend

        return cpu_backend.half_gemm_mode(dtype)
    return ""


def gemm_peak(dtype: torch.dtype, device: torch.device, size: int | None = None, repeats: int = 5) -> dict:
    """TFLOP/s of one size x size x size product through product_fn, the median of `repeats` after a warm-up, on
    random data (zeros run faster on some GPUs). 2048 on CPU, 8192 on a GPU (a smaller one is launch-bound there)."""
    size = size or (8192 if device.type == "cuda" else 2048)
    name, fn, operand_dtype = product_fn(dtype, device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, operand_dtype)
    b = torch.randn(size, size, generator=gen).to(device, operand_dtype)
    fn(a, False, b, True)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn(a, False, b, True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return dict(routine=name, shape=[size, size, size], seconds=seconds, tflops=2 * size**3 / seconds / 1e12)


def memory_available(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as fh:
            return int(re.search(r"MemAvailable:\s+(\d+) kB", fh.read()).group(1)) * 1024
    except (OSError, AttributeError):
        return 1 << 62
