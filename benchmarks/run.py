"""Benchmark runner: time and memory of every provider over the sweeps, side by side, appended as records.

    python -m benchmarks [--quick] [--sweeps lt-queue pixel supcon dim] [--sizes ...] [--providers ...]
                         [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--time-limit S] [--no-memory]
    python -m benchmarks --report [--check]      # results.md, plots, README and docs tables: from the records

Time: at each point every provider runs once to warm up (twice for torch.compile, whose first call compiles), then
the providers take turns for R rounds so that drift on a shared machine hits all alike; recorded are the median and
the 20th/80th percentiles of a forward+backward. Memory: the peak growth of one forward+backward, each provider in a
fresh process (benchmarks/memory.py). A provider that errors, runs out of memory or exceeds the time limit is recorded
with that status, not measured for memory, and not run at larger sizes of the sweep; dense points whose matrices
cannot fit (estimated from the published code's live copies) are recorded as 'oom-predicted' (an estimate, and
labelled so) instead of being run into the OOM killer. Each run also times one large product (the GEMM peak).

Every point appends its records to benchmarks/results/records.jsonl (one JSON object per line, never rewritten):
run id, commit, date, machine (CPU model and the flags that matter, or the GPU), threads, dtype, sweep, size,
provider, time and memory. `--report` (benchmarks/report.py) regenerates everything shown from that file. Exits 1 if
a provider errored (slow or out of memory is a result, not a failure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import torch

from gpaco_kernels._measure import is_out_of_memory

from .cases import SWEEPS, make_case
from .machine import ROOT, facts, gemm_peak, memory_available, variant
from .providers import PROVIDERS, dense_bytes, phases, unavailable
from .records import RECORDS, append


def seconds_of(fn, device: torch.device) -> float:
    """Time of one call: CUDA events around it on a GPU (kernels run asynchronously), the wall clock on CPU."""
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


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _failure(exc: BaseException) -> dict:
    text = f"{type(exc).__name__}: {exc}"
    status = "oom" if is_out_of_memory(text) else "error"
    return dict(status=status, note=text.strip().splitlines()[0][:300])


def time_point(case, providers, device, *, repeats, time_limit, budget_s, memory_bytes) -> dict:
    """{provider: timing record} for one sweep point, the providers interleaved."""
    records, steps = {}, {}
    for name in providers:
        if name in ("dense", "compiled") and dense_bytes(case) > memory_bytes:
            need = dense_bytes(case) / 2**30
            records[name] = dict(status="oom-predicted", note=f"needs ~{need:.0f} GiB > {memory_bytes / 2**30:.0f}")
            continue
        step = phases(name, case)["fwd+bwd"]
        try:
            if name == "compiled":
                step()  # compiles
            warm = seconds_of(step, device)
        except Exception as exc:  # recorded, not raised: one provider's failure must not hide the others' results
            records[name] = _failure(exc)
            continue
        if warm > time_limit:
            records[name] = dict(status="timeout", note=f"one step took {warm:.1f} s > {time_limit:.0f} s")
            continue
        steps[name] = (step, warm)
    if repeats is None:  # as many rounds as fit the budget, 3..15
        slowest = max((w for _, w in steps.values()), default=0.0)
        repeats = max(3, min(15, int(budget_s / max(slowest, 1e-3))))
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, (step, _) in list(steps.items()):
            try:
                times[name].append(seconds_of(step, device))
            except Exception as exc:  # e.g. out of memory once another provider's cached blocks are held
                records[name] = _failure(exc)
                del steps[name], times[name]
            if device.type == "cuda":
                torch.cuda.empty_cache()  # no provider runs in blocks another one left cached
    for name, values in times.items():
        records[name] = dict(
            status="ok",
            median_s=statistics.median(values),
            p20_s=percentile(values, 0.2),
            p80_s=percentile(values, 0.8),
            n=len(values),
        )
    return records


def memory_point(sweep, size, provider, device, *, timeout, dense_need, memory_bytes, dtype="float32") -> dict:
    """Peak memory growth of one fwd+bwd of the provider: in a fresh process on CPU (the C allocator keeps freed
    memory, so only a fresh process has a clean high-water mark), in this one on CUDA (the caching allocator counts
    every allocated byte and its peak resets exactly)."""
    if provider in ("dense", "compiled") and dense_need > memory_bytes:
        return dict(status="oom-predicted", note=f"needs ~{dense_need / 2**30:.0f} GiB")
    if torch.device(device).type == "cuda":
        from gpaco_kernels._measure import peak_growth

        torch.cuda.empty_cache()
        try:
            case = make_case(sweep, size, device=device, dtype=getattr(torch, dtype))
            growth, seconds, _ = peak_growth(phases(provider, case)["fwd+bwd"], device)
        except Exception as exc:
            return _failure(exc)
        finally:
            torch.cuda.empty_cache()
        return dict(status="ok", peak_mb=growth, cold_s=seconds)
    cmd = [sys.executable, "-m", "benchmarks.memory", "--sweep", sweep, "--size", str(size), "--provider", provider]
    cmd += ["--device", str(device), "--dtype", dtype]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return dict(status="timeout", note=f"> {timeout:.0f} s")
    if done.returncode != 0:
        killed = done.returncode in (-9, 137)
        if killed or is_out_of_memory(done.stderr):
            return dict(status="oom", note=(done.stderr.strip().splitlines() or ["killed"])[-1][:300])
        return dict(status="error", note=(done.stderr.strip().splitlines() or ["?"])[-1][:300])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return dict(status="ok", peak_mb=result["peak_growth_mb"], cold_s=result["seconds"])


def run(args, on_point=None) -> list[dict]:
    """All points of the chosen sweeps; on_point(new records) after each point (main appends them to the records
    file, so an interrupted run keeps what it measured). Returns every record of the run."""
    from tqdm import tqdm

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    providers = [p for p in args.providers if unavailable(p, device.type) is None]
    skipped = {p: unavailable(p, device.type) for p in args.providers if p not in providers}
    for name, why in skipped.items():
        print(f"skipping provider {name}: {why}", file=sys.stderr)
    memory_bytes = int(memory_available(device) * 0.8)
    run_id = uuid.uuid4().hex[:8]
    base = dict(run=run_id, quick=args.quick, dtype=args.dtype, machine=facts(device), variant=variant(dtype, device))
    fused = "triton" if device.type == "cuda" else "cpu"
    peak = dict(base, kind="gemm-peak", **gemm_peak(dtype, device))
    print(f"GEMM peak: {peak['tflops']:.3f} TFLOP/s ({peak['routine']}, {peak['shape']})", file=sys.stderr)
    records = [peak]
    if on_point is not None:
        on_point([peak])

    points = [(s, size) for s in args.sweeps for size in (SWEEPS[s].quick if args.quick else SWEEPS[s].full)]
    if args.sizes:
        points = [(s, size) for s, size in points if size in args.sizes]
    stopped = {}  # (sweep, provider) -> the record that stopped it at a smaller size
    bar = tqdm(points, desc="benchmarks", unit="point", file=sys.stderr)
    for sweep, size in bar:
        bar.set_postfix_str(f"{sweep} {size}")
        case = make_case(sweep, size, device=device, dtype=dtype)
        active = [p for p in providers if (sweep, p) not in stopped]
        timing = time_point(
            case,
            active,
            device,
            repeats=3 if args.quick else None,
            time_limit=args.time_limit,
            budget_s=args.budget,
            memory_bytes=memory_bytes,
        )
        dense_need, flops = dense_bytes(case), case.tight_flops()
        del case
        largest_quick = size == SWEEPS[sweep].quick[-1]
        new = []
        for provider in providers:
            if (sweep, provider) in stopped:
                first = stopped[(sweep, provider)]
                note = f"not run: {first['status']} at {first['size']}"
                rec = dict(time=dict(status=first["status"], note=note), memory=dict(status=first["status"], note=note))
            else:
                rec = dict(time=timing[provider])
                measure = not args.no_memory and (not args.quick or (largest_quick and provider != "compiled"))
                if measure and rec["time"]["status"] in ("ok", "oom-predicted"):
                    rec["memory"] = memory_point(
                        sweep,
                        size,
                        provider,
                        device,
                        timeout=args.time_limit * 4 + 120,
                        dense_need=dense_need,
                        memory_bytes=memory_bytes,
                        dtype=args.dtype,
                    )
                if rec["time"]["status"] != "ok":
                    stopped[(sweep, provider)] = dict(status=rec["time"]["status"], size=size)
            where = dict(kind="point", fused=fused, sweep=sweep, size=size, provider=provider, tight_flops=flops)
            new.append(dict(base, **where, **rec))
        records += new
        if on_point is not None:
            on_point(new)
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small sizes per sweep, 3 rounds (CI smoke run)")
    parser.add_argument("--sweeps", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--records", type=Path, default=RECORDS, help="the JSONL file records are appended to")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds one step may take")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed rounds per point (full mode)")
    parser.add_argument("--sizes", type=int, nargs="+", help="only these sizes of the chosen sweeps (a partial rerun)")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory measurements")
    parser.add_argument("--report", action="store_true", help="only regenerate results.md, plots and tables")
    parser.add_argument("--check", action="store_true", help="with --report: exit 1 if anything would change")
    args = parser.parse_args(argv)

    if args.report:
        from .report import regenerate

        return regenerate(args.records, check=args.check)

    args.records.parent.mkdir(parents=True, exist_ok=True)
    records = run(args, on_point=lambda new: append(args.records, new))
    print(f"appended {len(records)} records to {args.records}; `python -m benchmarks --report` redraws the tables")
    points = [r for r in records if r["kind"] == "point"]
    errors = [r for r in points if "error" in (r["time"]["status"], r.get("memory", {}).get("status"))]
    for r in errors:
        print(f"ERROR {r['sweep']} {r['size']} {r['provider']}: {r['time'].get('note') or r['memory'].get('note')}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
