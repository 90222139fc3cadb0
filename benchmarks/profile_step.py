"""Where one forward+backward of a provider spends its time: host (Python, dispatch, launches) against device
(kernels), from torch.profiler over a few warm steps.

    python -m benchmarks.profile_step --sweep lt-queue --size 8192 --provider triton --device cuda [--dtype bfloat16]

Prints the wall time per step, the device time per step (the sum of the kernels' times), the host operations that
took the most CPU time, and the kernels that took the most device time. When the wall time is far above the device
time, the step is bound by the host, and the host table says where.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from .cases import add_point_arguments, make_case
from .providers import phases


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_point_arguments(parser, device="cuda", dtype="bfloat16")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    case = make_case(args.sweep, args.size, device=device, dtype=getattr(torch, args.dtype))
    step = phases(args.provider, case)["fwd+bwd"]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(3):  # compile, autotune, warm caches
        step()
    sync()
    if args.provider == "triton":
        print(f"triton backward taken: {_triton_backward(step)}")
    walls = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        walls.append(time.perf_counter() - start)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        sync()
    events = prof.key_averages()
    device_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA") / args.steps
    title = f"{args.provider} {args.sweep} {args.size} {args.dtype} on {args.device}"
    print(f"{title}: wall {statistics.median(walls) * 1e3:.3f} ms per step (median of {args.steps}), "
          f"device {device_us / 1e3:.3f} ms per step (sum of kernel times)")  # fmt: skip
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    if device.type == "cuda":
        print(events.table(sort_by="self_device_time_total", row_limit=args.rows // 2, max_name_column_width=60))


def _triton_backward(step) -> str:
    """The backward shape one step takes (launch.BACKWARD asks; the launcher decides where it applies): whether the
    one-pass kernel ran, so that a profile named for a shape is known to have timed it."""
    from gpaco_kernels.triton import launch

    kernel, runs = launch._paco_bwd_one_pass_kernel, []
    original = kernel.run

    def run(*args, **kwargs):
        runs.append(1)
        return original(*args, **kwargs)

    kernel.run = run
    try:
        step()
    finally:
        kernel.run = original
    return "one-pass" if runs else "two-kernel"


if __name__ == "__main__":
    main()
