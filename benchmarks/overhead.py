"""The fixed cost of a training step: host time of one forward + backward of each public loss at a tiny size, next to
the bare `(a @ c.T).logsumexp(1).sum().backward()` of the same size, and the device launches and host reads of a step.

    python -m benchmarks.overhead [--device cpu|cuda] [--backends torch cpu triton] [--repeats 300] [--record]
                                  [--records FILE] [--workloads ...] [--verbose]
    python -m benchmarks.overhead --report   # the docs tables from the records (as `python -m benchmarks --report`)

At a tiny size (A 8 anchors, queue 64, C 16 classes, D 16) the kernels cost microseconds and what is measured is
the host path: argument checks, the prior, dispatch, launches. Each provider's step (loss and its gradients through
torch.autograd.grad) runs interleaved with the others in one process, `--repeats` rounds after a warm-up, and the
median is reported with its ratio to the bare step's median of the same rounds. On CUDA the host time is the time to
enqueue a step (the stream is synchronized before each step, outside the timing) and the wall time, synchronized
after the step, is reported as well. Launches and host reads come from one more step under
tools.launch_count.StepTrace. The triton backend on CPU runs under the Triton interpreter: its launches and reads are
counted, its time is not measured (an interpreter's time says nothing about a GPU's). --via-op adds each backend
once more through its torch.library operators (the route torch.compile takes; eager mode skips the dispatcher),
which shows what the dispatcher costs.

--record appends one record per (workload, provider) (kind "overhead") to benchmarks/results/records.jsonl, with
the machine's CPU model and flags, thread count, GPU and commit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

A, K, C, D = 8, 64, 16, 16
BARE = "bare mm+lse"

# workload -> (description, columns of the bare step with the same contrast size)
WORKLOADS = {
    "gpaco-lt": (f"GPaCo LT: A {A}, queue {K}, C {C}, D {D}, class counts, normalize", C + A + K),
    "pixel": (f"pixel: {4 * A} pixels, C {C}, D {D}, ignored pixels, normalize", C + 4 * A),
    "supcon": (f"SupCon: {A} x 2 views, D {D}, normalize", 2 * A),
    "psc": (f"PSC: {2 * A} rows, C {C} prototypes, D {D}", C),
    "compat.GPaCoLoss": (f"compat.GPaCoLoss: A {A}, K {K}, C {C}, D {D}, prior", C + A + K),
}


def _workload(name: str, backend: str, device):
    """(step, leaves): step() runs the loss's forward and backward once."""
    import torch

    import gpaco_kernels as gk

    gen = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=gen).to(device).requires_grad_()

    def labels(n, high=C):
        return torch.randint(0, high, (n,), generator=gen).to(device)

    counts = (torch.arange(1, C + 1, dtype=torch.float64) * 10).to(device)
    if name == "gpaco-lt":
        feats, logits, queue = leaf(A, D), leaf(A, C), torch.randn(K, D, generator=gen).to(device)
        lab, qlab = labels(A), labels(K)

        def loss():
            return gk.fused_paco_loss(
                feats, lab, queue=queue, queue_labels=qlab, center_logits=logits, class_counts=counts, alpha=0.05,
                normalize=True, backend=backend,
            )  # fmt: skip

        leaves = [feats, logits]
    elif name == "pixel":
        feats, logits, lab = leaf(4 * A, D), leaf(4 * A, C), labels(4 * A)
        lab[::5] = 255

        def loss():
            return gk.fused_paco_loss(feats, lab, center_logits=logits, ignore_index=255, normalize=True,
                                      backend=backend)  # fmt: skip

        leaves = [feats, logits]
    elif name == "supcon":
        feats, lab = leaf(A, 2, D), labels(A, 3)

        def loss():
            return gk.fused_supcon_loss(feats, lab, normalize=True, backend=backend)

        leaves = [feats]
    elif name == "psc":
        feats, protos, lab = leaf(2 * A, D), leaf(C, D), labels(2 * A)

        def loss():
            return gk.fused_psc_loss(feats, lab, protos, backend=backend)

        leaves = [feats, protos]
    elif name == "compat.GPaCoLoss":
        module = gk.compat.GPaCoLoss(alpha=0.05, K=K, num_classes=C, backend=backend)
        module.cal_weight_for_classes(counts.cpu().tolist())
        module.to(device)
        feats, logits, lab = leaf(A + K, D), leaf(A, C), labels(A + K)

        def loss():
            return module(feats, lab, logits)

        leaves = [feats, logits]
    else:
        raise ValueError(f"unknown workload {name!r}; one of {sorted(WORKLOADS)}")

    def step():
        return torch.autograd.grad(loss(), leaves)

    return step, leaves


def _through_the_operators(backend: str, step):
    """step with the backend's eager path switched off: the loss goes through its torch.library operators (what
    torch.compile sees), for the dispatcher's cost next to the eager path's."""
    from gpaco_kernels.ops.dispatch import load_backend

    module = load_backend(backend)

    def via_op():
        eager, module.EAGER = module.EAGER, None
        try:
            return step()
        finally:
            module.EAGER = eager

    return via_op


def _bare(columns: int, device):
    import torch

    gen = torch.Generator().manual_seed(1)
    a = torch.randn(A, D, generator=gen).to(device).requires_grad_()
    c = torch.randn(columns, D, generator=gen).to(device).requires_grad_()

    def step():
        return torch.autograd.grad((a @ c.T).logsumexp(1).sum(), [a, c])

    return step


def _trace(step):
    from tools.launch_count import StepTrace

    with StepTrace() as trace:
        step()
    return trace


def measure(workload: str, backends, device, repeats: int, via_op=()) -> list[dict]:
    """One result per provider (the bare step first): median host microseconds, and the trace of one step. via_op:
    backends also measured through their operators (provider "<backend>:op")."""
    import torch

    on_cuda = device.type == "cuda"
    interpreted = not on_cuda and os.environ.get("TRITON_INTERPRET") == "1"
    steps = {BARE: _bare(WORKLOADS[workload][1], device)}
    for backend in backends:
        steps[backend] = _workload(workload, backend, device)[0]
        if backend in via_op:
            steps[f"{backend}:op"] = _through_the_operators(backend, _workload(workload, backend, device)[0])
    timed = [p for p in steps if not (p.startswith("triton") and interpreted)]
    for step in steps.values():  # warm-up: compilation, autotune, caches, thread pools
        for _ in range(3):
            step()
    host = {p: [] for p in timed}
    wall = {p: [] for p in timed}
    for _ in range(repeats):
        for provider in timed:
            if on_cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            steps[provider]()
            host[provider].append(time.perf_counter() - start)
            if on_cuda:
                torch.cuda.synchronize(device)
                wall[provider].append(time.perf_counter() - start)
    results = []
    for provider, step in steps.items():
        trace = _trace(step)
        result = dict(workload=workload, provider=provider, launches=trace.launches, host_reads=trace.reads,
                      trace=trace.summary(), interpreted=provider.startswith("triton") and interpreted)  # fmt: skip
        if provider in host:
            result["host_us"] = statistics.median(host[provider]) * 1e6
            result["host_us_p10_p90"] = [_quantile(host[provider], q) * 1e6 for q in (0.1, 0.9)]
            if on_cuda:
                result["wall_us"] = statistics.median(wall[provider]) * 1e6
        results.append(result)
    return results


def _quantile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _row(result, bare) -> str:
    host = result.get("host_us")
    ratio = f"{host / bare['host_us']:.2f}x" if host is not None and result["provider"] != BARE else ""
    time_cell = f"{host:.0f}" if host is not None else "(interpreter)"
    wall = f" | {result['wall_us']:.0f}" if "wall_us" in result else ""
    return (f"{result['workload']:<17} | {result['provider']:<12} | {time_cell:>13} | {ratio:>7}{wall} | "
            f"{result['launches']:>8} | {result['host_reads']:>10}")  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--backends", nargs="+", default=None, help="default: every backend that runs on the device")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=300, help="timed rounds (each provider once per round)")
    parser.add_argument("--record", action="store_true", help="append the results to benchmarks/results/records.jsonl")
    parser.add_argument("--records", help="append the results to this JSONL file instead (implies --record)")
    parser.add_argument("--report", action="store_true", help="regenerate the docs tables from the records")
    parser.add_argument("--verbose", action="store_true", help="print each step's launches and reads by op")
    parser.add_argument("--via-op", nargs="*", default=None, metavar="BACKEND",
                        help="also time these backends (default: the timed ones) through their torch.library "
                             "operators, as torch.compile calls them, next to the eager path")  # fmt: skip
    args = parser.parse_args(argv)
    if args.report:
        from .report import regenerate

        return regenerate()
    if args.device == "cpu":  # the triton backend on CPU tensors: the interpreter (set before triton is imported)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    import gpaco_kernels as gk

    from .machine import facts
    from .records import RECORDS, append

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    backends = args.backends or [b for b in gk.available_backends(device.type) if b != "reference"]
    machine = facts(device)
    run = uuid.uuid4().hex[:8]
    print(f"{machine.get('gpu') or machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}; "
          f"median of {args.repeats} interleaved rounds")  # fmt: skip
    wall_head = " | wall us" if device.type == "cuda" else ""
    print(
        f"{'workload':<17} | {'provider':<12} | {'host us/step':>13} | {'/ bare':>7}{wall_head} | launches | host reads"
    )
    records = []
    for workload in args.workloads:
        via_op = () if args.via_op is None else (args.via_op or [b for b in backends if b != "triton" or on_cuda])
        results = measure(workload, backends, device, args.repeats, via_op)
        bare = results[0]
        for result in results:
            print(_row(result, bare))
            if args.verbose:
                print("    " + result["trace"])
            records.append(dict(kind="overhead", run=run, machine=machine, quick=args.repeats < 100,
                                repeats=args.repeats, description=WORKLOADS[workload][0], **result))  # fmt: skip
    if args.record or args.records:
        path = Path(args.records) if args.records else RECORDS
        append(path, records)
        print(f"appended {len(records)} records to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
