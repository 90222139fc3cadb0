"""Quickstart: the drop-in GPaCo loss at a realistic size, next to the dense reference.

    python python/examples/quickstart.py                     # GPaCo ImageNet-LT step (256 x [1000 | 256 | 8192])
    python python/examples/quickstart.py --workload pixel --batch 8192   # pixel loss, dense needs ~2 GB

Prints: agreement of the loss and its gradients with the dense reference, the median time of a forward+backward
(providers interleaved, so machine noise hits both alike), and the peak memory growth of one step, each provider
measured in a fresh process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tools/ (not in the wheel)

import gpaco_kernels as gk  # noqa: E402
from gpaco_kernels import compat  # noqa: E402
from tools.peak_memory import measure_in_subprocess  # noqa: E402
from tools.workloads import workload_inputs  # noqa: E402


def published_call(inputs, options, backend):
    """The call a user of the published code makes: features = [batch; queue], labels alike, sup_logits.
    The pixel workload uses the fused functional form (its published module takes no queue)."""
    if "queue" not in inputs:
        return gk.fused_paco_loss(**inputs, **options, backend=backend)
    loss_fn = compat.GPaCoLoss(
        alpha=options["alpha"],
        beta=options["beta"],
        gamma=options["gamma"],
        supt=options["center_temperature"],
        temperature=options["temperature"],
        K=inputs["queue"].shape[0],
        num_classes=inputs["center_logits"].shape[1],
        smooth=options["label_smoothing"],
        backend=backend,
    )
    loss_fn.cal_weight_for_classes(inputs["class_counts"].tolist())
    features = torch.cat([inputs["features"], inputs["queue"]])
    labels = torch.cat([inputs["labels"], inputs["queue_labels"]])
    return loss_fn(features, labels, inputs["center_logits"])


def run(inputs, options, backend):
    for leaf in (inputs["features"], inputs["center_logits"]):
        leaf.grad = None
    loss = published_call(inputs, options, backend)
    loss.backward()
    return loss.detach(), inputs["features"].grad.clone(), inputs["center_logits"].grad.clone()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["gpaco-lt", "pixel"], default="gpaco-lt")
    parser.add_argument("--batch", type=int, default=None, help="N; default 256 (gpaco-lt) or 16384 (pixel)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-memory", action="store_true", help="skip the fresh-process memory measurements")
    args = parser.parse_args()

    inputs, options = workload_inputs(args.workload, batch=args.batch)
    backend = "auto"
    print(
        f"gpaco_kernels {gk.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"auto backend = {gk.ops.resolve_backend(backend)}"
    )
    n, d = inputs["features"].shape
    k = inputs["queue"].shape[0] if "queue" in inputs else 0
    print(
        f"workload {args.workload}: anchors {inputs['num_anchors']}, batch {n}, queue {k}, "
        f"classes {inputs['center_logits'].shape[1]}, dim {d}, float32"
    )

    dense = run(inputs, options, "reference")
    fused = run(inputs, options, backend)
    for name, a, b in zip(["loss", "dfeatures", "dsup_logits"], fused, dense):
        err = (a - b).abs().max().item()
        rel = err / max(b.abs().max().item(), 1e-30)
        print(f"  agreement {name:12s} max abs diff {err:.2e} (relative {rel:.1e})")
        if not rel < 1e-4:
            raise SystemExit(f"{name} disagrees with the dense reference")

    times = {"reference": [], backend: []}
    for _ in range(args.repeats):
        for provider in times:  # interleaved: drift on a shared machine hits both alike
            start = time.perf_counter()
            run(inputs, options, provider)
            times[provider].append(time.perf_counter() - start)
    med = {p: statistics.median(t) for p, t in times.items()}
    print(
        f"  time (median of {args.repeats}, fwd+bwd): dense reference {med['reference'] * 1e3:.1f} ms, "
        f"fused {backend} {med[backend] * 1e3:.1f} ms, ratio {med['reference'] / med[backend]:.2f}x"
    )

    if not args.skip_memory:
        mem = {p: measure_in_subprocess(args.workload, p, batch=args.batch) for p in ("reference", backend)}
        print(
            f"  peak memory growth of one step (fresh process each): dense reference "
            f"{mem['reference']['peak_growth_mb']:.0f} MB, fused {backend} {mem[backend]['peak_growth_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
