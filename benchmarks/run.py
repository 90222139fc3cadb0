"""Benchmark runner: time and memory of every provider over the sweeps, side by side, written as JSON, markdown
and plots.

    python -m benchmarks [--quick] [--sweeps lt-queue pixel supcon dim] [--providers ...] [--device cpu|cuda]
                         [--out benchmarks/results] [--machine NAME] [--time-limit S] [--no-memory]

Time: at each point every provider runs once to warm up (twice for torch.compile, whose first call compiles), then
the providers take turns for R rounds so that drift on a shared machine hits all alike; recorded are the median and
the 20th/80th percentiles of a forward+backward. Memory: the peak growth of one forward+backward, each provider in a
fresh process (benchmarks/memory.py). A provider that errors, runs out of memory or exceeds the time limit is recorded
with that status, not measured for memory, and not run at larger sizes of the sweep; dense points whose matrices
cannot fit (estimated from the published code's live copies) are recorded as 'oom-predicted' instead of being run
into the OOM killer.

Writes <out>/<machine>/results.json (after every point, so an interrupted run keeps what it measured), results.md
and <sweep>-time.png, <sweep>-memory.png. Exits 1 if a provider errored (slow or out of memory is a result, not a
failure).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import gpaco_kernels as gk

from .cases import SWEEPS, make_case
from .providers import PROVIDERS, dense_bytes, phases, unavailable

ROOT = Path(__file__).resolve().parent.parent
OOM_PATTERNS = ("out of memory", "can't allocate memory", "std::bad_alloc", "CUDA out of memory")


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


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as fh:
            return int(re.search(r"MemAvailable:\s+(\d+) kB", fh.read()).group(1)) * 1024
    except (OSError, AttributeError):
        return 1 << 62


def _failure(exc: BaseException) -> dict:
    text = f"{type(exc).__name__}: {exc}"
    status = "oom" if any(p in text for p in OOM_PATTERNS) else "error"
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
        for name, (step, _) in steps.items():
            times[name].append(seconds_of(step, device))
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
    """Peak memory growth of one fwd+bwd of the provider, in a fresh process."""
    if provider in ("dense", "compiled") and dense_need > memory_bytes:
        return dict(status="oom-predicted", note=f"needs ~{dense_need / 2**30:.0f} GiB")
    cmd = [sys.executable, "-m", "benchmarks.memory", "--sweep", sweep, "--size", str(size), "--provider", provider]
    cmd += ["--device", str(device), "--dtype", dtype]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return dict(status="timeout", note=f"> {timeout:.0f} s")
    if done.returncode != 0:
        killed = done.returncode in (-9, 137)
        if killed or any(p in done.stderr for p in OOM_PATTERNS):
            return dict(status="oom", note=(done.stderr.strip().splitlines() or ["killed"])[-1][:300])
        return dict(status="error", note=(done.stderr.strip().splitlines() or ["?"])[-1][:300])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return dict(status="ok", peak_mb=result["peak_growth_mb"], cold_s=result["seconds"])


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return f"cpu-{os.cpu_count()}core-{platform.machine()}"


def machine_facts(device: torch.device) -> dict:
    facts = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=str(device),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        gpaco_kernels=gk.__version__,
        python=platform.python_version(),
    )
    try:
        with open("/proc/cpuinfo") as fh:
            facts["cpu"] = re.search(r"model name\s*:\s*(.*)", fh.read()).group(1)
    except (OSError, AttributeError):
        facts["cpu"] = platform.processor()
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    try:
        facts["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return facts


def run(args, on_point=None) -> dict:
    """All points of the chosen sweeps; on_point(partial results) after each point (the runner saves them, so an
    interrupted full run keeps what it measured)."""
    from tqdm import tqdm

    device = torch.device(args.device)
    providers = [p for p in args.providers if unavailable(p, device.type) is None]
    skipped = {p: unavailable(p, device.type) for p in args.providers if p not in providers}
    for name, why in skipped.items():
        print(f"skipping provider {name}: {why}", file=sys.stderr)
    memory_bytes = int(available_memory_bytes(device) * 0.8)
    facts = dict(machine_facts(device), dtype=args.dtype)
    dtype = getattr(torch, args.dtype)
    fused = "triton" if device.type == "cuda" else "cpu"

    def results(records, partial):
        return dict(machine=facts, quick=args.quick, fused=fused, partial=partial, skipped=skipped, records=records)

    records = []
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
        dense_need = dense_bytes(case)
        del case
        largest_quick = size == SWEEPS[sweep].quick[-1]
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
            records.append(dict(sweep=sweep, size=size, provider=provider, **rec))
        if on_point is not None:
            on_point(results(records, partial=True))
    return results(records, partial=False)


# ---------------------------------------------------------------------------------------------------------------
# Reports


def _by_point(results):
    table = {}
    for r in results["records"]:
        table.setdefault(r["sweep"], {}).setdefault(r["size"], {})[r["provider"]] = r
    return table


def _cell_time(rec):
    t = rec["time"]
    return f"{t['median_s'] * 1e3:.3g}" if t["status"] == "ok" else t["status"]


def _cell_memory(rec):
    m = rec.get("memory")
    if m is None:
        return "-"
    return f"{m['peak_mb']:.0f}" if m["status"] == "ok" else m["status"]


def _faster(ratio: float, what: str) -> str:
    return f"{ratio:.1f}x faster than {what}" if ratio >= 1 else f"{1 / ratio:.1f}x slower than {what}"


def headline(results) -> list[str]:
    """Per sweep: at the largest size dense eager ran, the fused backend's time ratios and memory."""
    fused, lines = results["fused"], []
    for sweep, points in _by_point(results).items():
        ok = [s for s, p in points.items() if p.get("dense", {}).get("time", {}).get("status") == "ok" and fused in p]
        if not ok:
            continue
        size = max(ok)
        p = points[size]
        t = {k: v["time"]["median_s"] for k, v in p.items() if v["time"]["status"] == "ok"}
        if fused not in t:
            continue
        parts = [_faster(t["dense"] / t[fused], "dense eager")]
        if "compiled" in t:
            parts.append(_faster(t["compiled"] / t[fused], "torch.compile"))
        if "floor" in t:
            parts.append(f"{t[fused] / t['floor']:.2f}x the floor's time")
        mem = {k: v.get("memory", {}) for k, v in p.items()}
        if mem.get("dense", {}).get("status") == "ok" and mem.get(fused, {}).get("status") == "ok":
            parts.append(f"memory {mem[fused]['peak_mb']:.0f} MB vs dense {mem['dense']['peak_mb']:.0f} MB")
        lines.append(f"{sweep} at {size} (the largest size dense eager ran at): {fused} " + ", ".join(parts))
    return lines


def markdown(results) -> str:
    m = results["machine"]
    out = [
        f"# Benchmarks: {m.get('gpu') or m.get('cpu')} ({m['threads']} threads), {m['date']}",
        "",
        f"torch {m['torch']}, gpaco_kernels {m['gpaco_kernels']}, commit {m.get('commit', '?')}",
        f"{'quick' if results['quick'] else 'full'} mode. Time: median ms of forward+backward (interleaved rounds);"
        " memory: peak growth MB of one forward+backward in a fresh process ('-': not measured; quick mode measures"
        " the largest size only, without torch.compile). Statuses: oom-predicted (the dense matrices cannot fit),"
        " oom, timeout (one step over the time limit), error.",
        "",
    ]
    for name, why in results.get("skipped", {}).items():
        out.append(f"- provider `{name}` not run here: {why}")
    for note in results.get("notes", []):
        out.append(f"- {note}")
    out += ["", "## Headline", ""] + [f"- {line}" for line in headline(results)] + [""]
    for sweep, points in _by_point(results).items():
        providers = list(next(iter(points.values())))
        out += [f"## {SWEEPS[sweep].title}: {SWEEPS[sweep].axis}", ""]
        head = f"| {SWEEPS[sweep].axis} | " + " | ".join(providers)
        fused = results["fused"]
        out += [head + f" | {fused} vs dense | {fused} vs floor |", "|" + "---|" * (len(providers) + 3)]
        for size, p in sorted(points.items()):
            row = [_cell_time(p[k]) for k in providers]
            ok = {k: v["time"]["median_s"] for k, v in p.items() if v["time"]["status"] == "ok"}
            vs_dense = _faster(ok["dense"] / ok[fused], "dense") if "dense" in ok and fused in ok else "-"
            vs_floor = f"{ok[fused] / ok['floor']:.2f}x" if "floor" in ok and fused in ok else "-"
            out.append(f"| {size} | " + " | ".join(row) + f" | {vs_dense} | {vs_floor} |")
        out += ["", f"Peak memory growth (MB), {SWEEPS[sweep].axis}:", ""]
        out += [head + " |", "|" + "---|" * (len(providers) + 1)]
        for size, p in sorted(points.items()):
            out.append(f"| {size} | " + " | ".join(_cell_memory(p[k]) for k in providers) + " |")
        out.append("")
    return "\n".join(out)


def plots(results, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for sweep, points in _by_point(results).items():
        for what, unit in (("time", "ms per forward+backward"), ("memory", "peak memory growth, MB")):
            fig, ax = plt.subplots(figsize=(6, 4))
            providers = list(next(iter(points.values())))
            for provider in providers:
                xs, ys = [], []
                for size, p in sorted(points.items()):
                    rec = p[provider].get(what) or {}
                    if rec.get("status") == "ok":
                        xs.append(size)
                        ys.append(rec["median_s"] * 1e3 if what == "time" else max(rec["peak_mb"], 0.1))
                if xs:
                    ax.plot(xs, ys, marker="o", label=provider)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(SWEEPS[sweep].axis)
            ax.set_ylabel(unit)
            ax.set_title(SWEEPS[sweep].title, fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            path = folder / f"{sweep}-{what}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small sizes per sweep, 3 rounds (CI smoke run)")
    parser.add_argument("--sweeps", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--machine", help="results folder name (default: derived from the device)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds one step may take")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed rounds per point (full mode)")
    parser.add_argument("--sizes", type=int, nargs="+", help="only these sizes of the chosen sweeps (a partial rerun)")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory measurements")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--report", type=Path, help="only rewrite results.md and the plots from this results.json")
    args = parser.parse_args(argv)

    if args.report:
        results = json.loads(args.report.read_text())
        (args.report.parent / "results.md").write_text(markdown(results))
        plots(results, args.report.parent)
        print(markdown(results))
        return 0

    folder = args.out / (args.machine or machine_name(torch.device(args.device)))
    folder.mkdir(parents=True, exist_ok=True)

    def save(partial_results):
        (folder / "results.json").write_text(json.dumps(partial_results, indent=1))

    results = run(args, on_point=save)
    save(results)
    (folder / "results.md").write_text(markdown(results))
    written = [] if args.no_plots else plots(results, folder)
    print(markdown(results))
    print(f"wrote {folder / 'results.json'}, results.md" + (f" and {len(written)} plots" if written else ""))
    errors = [r for r in results["records"] if "error" in (r["time"]["status"], r.get("memory", {}).get("status"))]
    for r in errors:
        print(f"ERROR {r['sweep']} {r['size']} {r['provider']}: {r['time'].get('note') or r['memory'].get('note')}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
