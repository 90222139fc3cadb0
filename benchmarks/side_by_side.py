"""Side-by-side forward+backward time of the providers on the standard workloads, interleaved in one process.

    python benchmarks/side_by_side.py [--workload gpaco-lt|pixel] [--batch N] [--repeats R] [--providers ...]

Providers: each backend by name, and 'floor', the three bare products every exact method computes
(logits = anchors @ contrast^T, dAnchors = G @ contrast, dContrast = G^T @ anchors) at the same sizes. Prints the
median and 20/80 percentiles per provider and the ratio of each median to the floor's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gpaco_kernels.ops import available_backends
from gpaco_kernels.tools.workloads import step, workload_inputs


def floor_step(inputs):
    anchors = inputs["features"].detach()[: inputs["num_anchors"]]
    contrast = inputs["features"].detach()
    if "queue" in inputs:
        contrast = torch.cat([contrast, inputs["queue"]])
    g = anchors @ contrast.T
    g @ contrast
    g.T @ anchors


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["gpaco-lt", "pixel"], default="gpaco-lt")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--providers", nargs="+", default=["floor", *available_backends()])
    args = parser.parse_args()

    inputs, options = workload_inputs(args.workload, batch=args.batch)
    runs = {
        name: (lambda: floor_step(inputs)) if name == "floor" else (lambda name=name: step(inputs, options, name))
        for name in args.providers
    }
    for fn in runs.values():  # warm-up
        fn()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            for leaf in (inputs["features"], inputs["center_logits"]):
                leaf.grad = None
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    print(
        f"{args.workload}, N = {inputs['features'].shape[0]}, {torch.get_num_threads()} threads, fwd+bwd, "
        f"{args.repeats} interleaved repeats"
    )
    floor = statistics.median(times["floor"]) if "floor" in times else None
    for name, values in times.items():
        med = statistics.median(values)
        ratio = f"  {med / floor:5.2f}x floor" if floor else ""
        print(
            f"  {name:10s} median {med * 1e3:9.1f} ms  p20 {percentile(values, 0.2) * 1e3:9.1f}  "
            f"p80 {percentile(values, 0.8) * 1e3:9.1f}{ratio}"
        )


if __name__ == "__main__":
    main()
