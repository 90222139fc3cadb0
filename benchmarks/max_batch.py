"""The largest problem whose forward+backward step fits under a memory budget, per provider.

    python -m benchmarks.max_batch --budget 2GiB                      # CPU: supcon, lt-queue, pixel
    python -m benchmarks.max_batch --budget 2GiB --device cuda --dtype bfloat16
    python -m benchmarks.max_batch --budget 256MiB --quick            # CI: a small budget, capped sizes

Sizes: the SupCon two-view batch (2 x batch anchors and columns), the GPaCo LT queue length (256 anchors, 1000
classes), the number of pixels of the GPaCo pixel loss (every pixel an anchor); the inputs of benchmarks/cases.py.

Each try is one fresh process: it builds the inputs, runs one small step of the provider (thread pools, allocator
arenas and, for torch.compile, the compilation are set up there, outside the budget), then sets the limit and runs
one forward+backward at the size tried:
- CPU: RLIMIT_AS, the process's address space, set to what it uses then plus the budget. An allocation past it fails
  (std::bad_alloc / "can't allocate memory"), which the try reports as out of memory. Address space is at least the
  memory touched, so the limit is strict: a step under it used at most the budget.
- CUDA: the caching allocator's limit (torch.cuda.set_per_process_memory_fraction) at what is allocated then plus
  the budget.
The budget is the memory of the loss step: the inputs (features, queue, labels) are allocated before it is set and
not counted. A try that runs longer than --time-limit is stopped and counts as a failure by time.

Search per (workload, provider): the size doubles from the workload's start until a try fails; after an
out-of-memory failure it bisects between the last size that fit and the first that did not (down to a ratio of
--resolution); after a failure by time it makes one more try, at the size the last step's time predicts to finish in
80% of the limit, and stops (the size is then limited by time, not memory, and recorded so).
Results are appended to benchmarks/results/records.jsonl (kind "max-batch"); `python -m benchmarks --report` draws
the table and plot of docs/benchmarks.md. Exits 1 when a fused backend errors (a crash, not a limit), or with
--quick when the dense formula is not the provider the budget stops first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import uuid

import torch

from gpaco_kernels._measure import is_out_of_memory

from .machine import ROOT, facts
from .records import RECORDS, append

WORKLOADS = {  # name -> (start size, the size's meaning, how a step's work grows with the size: size ** power)
    "supcon": (256, "two-view batch", 2),
    "lt-queue": (4096, "queue length", 1),
    "pixel": (1024, "pixels", 2),
}
MAX_SIZE = 1 << 22


def parse_bytes(text: str) -> int:
    """'2GiB', '512MiB', '1.5GB', '300000000' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?i?B?)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"--budget: cannot read {text!r} as a size (say 2GiB, 512MiB, 1GB)")
    value, unit = float(m.group(1)), (m.group(2) or "").upper()
    scale = {"": 1, "B": 1, "K": 1024, "KB": 1000, "KIB": 1024, "M": 2**20, "MB": 10**6, "MIB": 2**20}
    scale.update({"G": 2**30, "GB": 10**9, "GIB": 2**30, "T": 2**40, "TB": 10**12, "TIB": 2**40})
    if unit not in scale:
        raise argparse.ArgumentTypeError(f"--budget: unknown unit in {text!r}")
    return int(value * scale[unit])


def fused_providers(device_type: str) -> list[str]:
    from .providers import unavailable

    return [p for p in ("cpu", "triton", "torch") if unavailable(p, device_type) is None]


# ---------------------------------------------------------------------------------------------------------------
# One try (the child process)


def try_once(workload: str, size: int, provider: str, budget: int, device: str, dtype: str) -> dict:
    """One forward+backward at `size` under the budget, in this process. Returns the try's record."""
    from gpaco_kernels._measure import peak_growth, set_memory_limit

    from .cases import make_case
    from .providers import phases

    dev = torch.device(device)
    dtype_ = getattr(torch, dtype)
    # Warm-up on a small problem: thread pools, allocator arenas, torch.compile's compilation (dynamic shapes after
    # the second size), kernels' autotuning: all set up once, outside the budget, as in a training loop.
    small = WORKLOADS[workload][0]
    for warm_size in (small, small * 2):
        phases(provider, make_case(workload, warm_size, device=dev, dtype=dtype_))["fwd+bwd"]()
    case = make_case(workload, size, device=dev, dtype=dtype_)
    step = phases(provider, case)["fwd+bwd"]
    how = set_memory_limit(dev, budget)
    try:
        growth, seconds, _ = peak_growth(step, device)
    except (RuntimeError, MemoryError) as exc:
        text = f"{type(exc).__name__}: {exc}"
        status = "oom" if is_out_of_memory(text) else "error"
        return dict(status=status, note=text.strip().splitlines()[0][:300], limit=how)
    return dict(status="ok", peak_mb=growth, seconds=seconds, limit=how)


# ---------------------------------------------------------------------------------------------------------------
# The search (the parent)


def run_try(workload, size, provider, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.max_batch", "--try", workload, str(size), provider]
    cmd += ["--budget", str(args.budget), "--device", args.device, "--dtype", args.dtype]
    # Large blocks straight from mmap and back on free, so the peak growth of the step is not hidden by memory the
    # warm-up freed but glibc kept; inductor compiles in-process (workers would inherit the limit).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", TORCHINDUCTOR_COMPILE_THREADS="1")
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.time_limit, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return dict(size=size, status="timeout", note=f"over {args.time_limit:.0f} s")
    wall = round(time.perf_counter() - start, 1)
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return dict(size=size, wall_s=wall, **json.loads(lines[-1]))
    err = done.stderr.strip().splitlines() or ["killed"]
    killed = done.returncode in (-9, 137)
    status = "oom" if killed or is_out_of_memory(done.stderr) else "error"
    return dict(size=size, status=status, wall_s=wall, note=err[-1][:300])


def search(workload, provider, args, log=print) -> dict:
    """Doubling, then bisection after an out-of-memory failure. Returns the largest size that fit and why not more."""
    size = args.start or WORKLOADS[workload][0]
    tries, best, failed = [], None, None
    while size <= args.max_size:
        t = run_try(workload, size, provider, args)
        tries.append(t)
        log(f"  {workload:8} {provider:9} {size:>9}  {t['status']:8} {t.get('peak_mb', '')}")
        if t["status"] != "ok":
            failed = t
            break
        best, size = size, size * 2
    if failed is not None and failed["status"] == "oom" and best is not None:
        lo, hi = best, failed["size"]
        while hi / lo > args.resolution and hi - lo > 1:
            mid = (lo + hi) // 2
            t = run_try(workload, mid, provider, args)
            tries.append(t)
            log(f"  {workload:8} {provider:9} {mid:>9}  {t['status']:8} {t.get('peak_mb', '')}")
            if t["status"] == "ok":
                lo = mid
            elif t["status"] == "oom":
                hi = mid
            else:  # a time-out or error while bisecting: stop there
                failed = t
                break
        best = lo
    elif failed is not None and failed["status"] == "timeout" and best is not None:
        # One more try between the last size that fit and the one that ran out of time: the largest size the last
        # step's time, scaled by the workload's growth, predicts to finish within 80% of the limit.
        last = next(t for t in reversed(tries) if t["status"] == "ok" and t["size"] == best)
        overhead = max(0.0, last.get("wall_s", 0.0) - last["seconds"])
        room = (0.8 * args.time_limit - overhead) / max(last["seconds"], 1e-3)
        size = int(best * room ** (1 / WORKLOADS[workload][2])) // 64 * 64
        if best * 1.05 < size < failed["size"]:
            t = run_try(workload, size, provider, args)
            tries.append(t)
            log(f"  {workload:8} {provider:9} {size:>9}  {t['status']:8} {t.get('peak_mb', '')}  (time-predicted)")
            if t["status"] == "ok":
                best = size
    stopped_by = "max-size" if failed is None else failed["status"]
    return dict(largest=best, stopped_by=stopped_by, tries=tries)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=parse_bytes, default=parse_bytes("2GiB"), help="e.g. 2GiB, 512MiB")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--providers", nargs="+", help="default: dense, compiled and every fused backend here")
    parser.add_argument("--time-limit", type=float, default=180.0, help="seconds one try may take (whole process)")
    parser.add_argument("--start", type=int, help="first size (default: the workload's)")
    parser.add_argument("--max-size", type=int, default=MAX_SIZE)
    parser.add_argument("--resolution", type=float, default=1.1, help="bisect until hi / lo <= this")
    parser.add_argument("--records", default=str(RECORDS))
    parser.add_argument("--quick", action="store_true", help="CI: recorded as quick (left out of the report)")
    parser.add_argument("--try", nargs=3, metavar=("WORKLOAD", "SIZE", "PROVIDER"), dest="one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        workload, size, provider = args.one
        print(json.dumps(try_once(workload, int(size), provider, args.budget, args.device, args.dtype)))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch here")
    providers = args.providers or ["dense", "compiled", *fused_providers(device.type)]
    fused = [p for p in providers if p in ("cpu", "triton", "torch")]
    run = uuid.uuid4().hex[:8]
    base = dict(kind="max-batch", run=run, quick=args.quick, dtype=args.dtype, machine=facts(device))
    base.update(budget_bytes=args.budget, time_limit_s=args.time_limit, max_size=args.max_size)
    print(f"largest size under {args.budget / 2**20:.0f} MiB on {args.device}, {args.dtype} (run {run})")
    results, status = {}, 0
    for workload in args.workloads:
        for provider in providers:
            found = search(workload, provider, args)
            results[(workload, provider)] = found
            append(args.records, [dict(base, workload=workload, provider=provider, **found)])
            if provider in fused and any(t["status"] == "error" for t in found["tries"]):
                print(f"error: fused backend {provider} failed on {workload}", file=sys.stderr)
                status = 1
    print(f"\n{'workload':10}{'provider':10}{'largest':>10}  stopped by   x dense")
    for (workload, provider), found in results.items():
        dense = results.get((workload, "dense"), {}).get("largest")
        ratio = f"{found['largest'] / dense:7.1f}x" if dense and found["largest"] else "      -"
        print(f"{workload:10}{provider:10}{found['largest'] or 0:>10}  {found['stopped_by']:10} {ratio}")
    if args.quick:  # the dense formula must be the one the budget stops, and before any fused backend
        for workload in args.workloads:
            dense = results.get((workload, "dense"))
            if dense is None:
                continue
            if dense["stopped_by"] != "oom":
                print(f"error: dense {workload} was not stopped by the budget ({dense['stopped_by']})", file=sys.stderr)
                status = 1
            for p in fused:
                mine = results[(workload, p)]
                if mine["stopped_by"] == "oom" or (mine["largest"] or 0) <= (dense["largest"] or 0):
                    print(f"error: {p} {workload} does not get past dense under the budget", file=sys.stderr)
                    status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
