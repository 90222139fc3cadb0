"""Side-by-side forward+backward time of loss providers on the standard workloads, interleaved in one process.

    python benchmarks/side_by_side.py [--workload gpaco-lt|pixel] [--batch N] [--repeats R] [--providers ...]
    python benchmarks/side_by_side.py --headline      # LT step, pixel 16384, memory at 32768
    [--device cuda]                                   # default: cuda when a GPU is visible, else cpu

Providers:
    floor      the three bare products every exact method computes at these sizes, as three big GEMMs:
               logits = anchors @ contrast^T, G @ contrast, G^T @ anchors (contrast = batch rows + queue)
    dense      the published formula as the official code computes it (benchmarks/dense_published.py)
    compiled   torch.compile of `dense` (compile time excluded: it runs during warm-up)
    reference, torch, cpu, triton   gpaco_kernels backends (fused_paco_loss) that run on the device
Each provider runs once to warm up, then the providers take turns for R rounds, so drift on a shared machine hits
all alike. Printed: median and 20/80 percentiles, and each median's ratio to the floor and to dense. On CUDA a step
is timed with CUDA events around it (the GPU's time, not the launch's) and memory is the allocator's peak; on CPU
with the wall clock and the resident-memory peak.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dense_published import dense_call  # noqa: E402

from gpaco_kernels.ops import available_backends  # noqa: E402
from gpaco_kernels.tools.peak_memory import measure_in_subprocess  # noqa: E402
from gpaco_kernels.tools.workloads import step, workload_inputs  # noqa: E402


def floor_step(inputs):
    anchors = inputs["features"].detach()[: inputs["num_anchors"]]
    contrast = inputs["features"].detach()
    if "queue" in inputs:
        contrast = torch.cat([contrast, inputs["queue"]])
    g = anchors @ contrast.T
    g @ contrast
    g.T @ anchors


def provider_steps(names, inputs, options):
    def dense_step(fn):
        def run():
            fn(inputs, options).backward()

        return run

    steps = {}
    for name in names:
        if name == "floor":
            steps[name] = lambda: floor_step(inputs)
        elif name == "dense":
            steps[name] = dense_step(dense_call)
        elif name == "compiled":
            steps[name] = dense_step(torch.compile(dense_call))
        else:
            steps[name] = lambda name=name: step(inputs, options, name)
    return steps


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def seconds_of(fn, device: torch.device) -> float:
    """Time of one call of fn: CUDA events on a GPU (kernels run asynchronously), the wall clock on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_providers(workload, batch, names, repeats, device):
    """{provider: [seconds per fwd+bwd]} measured interleaved."""
    inputs, options = workload_inputs(workload, batch=batch, device=device)
    steps = provider_steps(names, inputs, options)
    times = {name: [] for name in steps}
    for round_ in range(repeats + 1):
        for name, fn in steps.items():
            for leaf in (inputs["features"], inputs["center_logits"]):
                leaf.grad = None
            elapsed = seconds_of(fn, device)
            if round_:  # round 0 is the warm-up (and torch.compile's compilation, triton's JIT)
                times[name].append(elapsed)
    return times


def report(title, times):
    print(title)
    floor = statistics.median(times["floor"]) if "floor" in times else None
    dense = statistics.median(times["dense"]) if "dense" in times else None
    for name, values in times.items():
        med = statistics.median(values)
        line = f"  {name:10s} median {med * 1e3:9.1f} ms  p20 {percentile(values, 0.2) * 1e3:9.1f}  "
        line += f"p80 {percentile(values, 0.8) * 1e3:9.1f}"
        if floor:
            line += f"  {med / floor:5.2f}x floor"
        if dense:
            line += f"  {dense / med:6.2f}x faster than dense"
        print(line)


def headline(repeats, device):
    fused = "cpu" if device.type == "cpu" else "triton"
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    lt = time_providers("gpaco-lt", None, ["floor", "dense", "compiled", fused], repeats, device)
    report(f"GPaCo ImageNet-LT step (256 x [1000 | 256 | 8192], D 128), {where}, fwd+bwd, float32", lt)
    px = time_providers("pixel", None, ["floor", "dense", fused], max(3, repeats // 3), device)
    report(f"GPaCo pixel loss, every pixel of 512x512 at stride 4 (N 16384, C 150, D 128), {where}", px)
    mem = measure_in_subprocess("pixel", fused, batch=32768, device=device)
    print(
        f"GPaCo pixel loss at N = 32768 (dense would need > 30 GB): {fused} backend peak memory growth "
        f"{mem['peak_growth_mb']:.0f} MB, {mem['seconds']:.1f} s for one cold step"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["gpaco-lt", "pixel"], default="gpaco-lt")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--providers", nargs="+", help="default: floor, dense and every backend that runs on --device")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--headline", action="store_true", help="print the headline comparisons and exit")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.headline:
        headline(args.repeats, device)
        return
    providers = args.providers or ["floor", "dense", *available_backends(device.type)]
    times = time_providers(args.workload, args.batch, providers, args.repeats, device)
    n = args.batch or ("default" if args.batch is None else args.batch)
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    report(f"{args.workload}, N = {n}, {where}, fwd+bwd, {args.repeats} rounds", times)


if __name__ == "__main__":
    main()
