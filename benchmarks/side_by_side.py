"""One sweep point, side by side: forward+backward time of the providers, interleaved in one process.

    python benchmarks/side_by_side.py [--sweep lt-queue|pixel|supcon|dim] [--size N] [--repeats R] [--providers ...]
    python benchmarks/side_by_side.py --headline      # LT step (queue 8192), pixel 16384, memory at 32768
    [--device cuda]                                   # default: cuda when a GPU is visible, else cpu

Providers and timing are those of the runner (benchmarks/run.py, `python -m benchmarks` for the full sweeps): each
provider warms up, then they take turns for R rounds; printed are the median, the 20/80 percentiles and each median's
ratio to the floor and to dense eager.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cases import SWEEPS, make_case  # noqa: E402
from benchmarks.providers import PROVIDERS, unavailable  # noqa: E402
from benchmarks.run import available_memory_bytes, memory_point, time_point  # noqa: E402

DEFAULT_SIZES = {"lt-queue": 8192, "pixel": 16384, "supcon": 1024, "dim": 128}


def _where(device):
    return f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)


def report(title, records):
    print(title)
    ok = {k: r["median_s"] for k, r in records.items() if r["status"] == "ok"}
    for name, r in records.items():
        if r["status"] != "ok":
            print(f"  {name:10s} {r['status']}: {r.get('note', '')}")
            continue
        line = f"  {name:10s} median {r['median_s'] * 1e3:9.1f} ms  p20 {r['p20_s'] * 1e3:9.1f}  "
        line += f"p80 {r['p80_s'] * 1e3:9.1f}"
        if "floor" in ok:
            line += f"  {r['median_s'] / ok['floor']:5.2f}x floor"
        if "dense" in ok:
            line += f"  {ok['dense'] / r['median_s']:6.2f}x faster than dense"
        print(line)


def point(sweep, size, providers, repeats, device):
    case = make_case(sweep, size, device=device)
    budget = dict(time_limit=600.0, budget_s=0.0, memory_bytes=int(available_memory_bytes(device) * 0.8))
    return time_point(case, providers, device, repeats=repeats, **budget)


def headline(repeats, device):
    fused = "cpu" if device.type == "cpu" else "triton"
    where = _where(device)
    lt = point("lt-queue", 8192, ["floor", "dense", "compiled", fused], repeats, device)
    report(f"GPaCo ImageNet-LT step (256 x [1000 | 256 | 8192], D 128), {where}, fwd+bwd, float32", lt)
    px = point("pixel", 16384, ["floor", "dense", fused], max(3, repeats // 3), device)
    report(f"GPaCo pixel loss, every pixel of 512x512 at stride 4 (N 16384, C 150, D 128), {where}", px)
    mem = memory_point("pixel", 32768, fused, device, timeout=600, dense_need=0, memory_bytes=1)
    print(
        f"GPaCo pixel loss at N = 32768 (dense would need > 30 GB): {fused} backend peak memory growth "
        f"{mem.get('peak_mb', float('nan')):.0f} MB, {mem.get('cold_s', float('nan')):.1f} s for one cold step"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", choices=sorted(SWEEPS), default="lt-queue")
    parser.add_argument("--size", type=int, help="default: the sweep's headline size")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, help="default: every provider that runs here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--headline", action="store_true", help="print the headline comparisons and exit")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.headline:
        headline(args.repeats, device)
        return
    providers = args.providers or [p for p in PROVIDERS if unavailable(p, device.type) is None]
    size = args.size or DEFAULT_SIZES[args.sweep]
    where = _where(device)
    records = point(args.sweep, size, providers, args.repeats, device)
    report(f"{SWEEPS[args.sweep].title}, {SWEEPS[args.sweep].axis} = {size}, {where}, fwd+bwd", records)


if __name__ == "__main__":
    main()
