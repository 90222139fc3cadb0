"""One sweep point, side by side, printed and not recorded: for a quick look while working on a kernel.

    python benchmarks/side_by_side.py [--sweep lt-queue|pixel|supcon|dim] [--size N] [--repeats R]
                                      [--providers ...] [--device cuda] [--dtype bfloat16]

Providers and timing are those of the runner (`python -m benchmarks`, whose records docs/benchmarks.md shows): each
provider warms up, then they take turns for R rounds; printed are the median, the 20/80 percentiles and each median's
ratio to the tight floor and to dense eager.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cases import SWEEPS, make_case  # noqa: E402
from benchmarks.machine import memory_available  # noqa: E402
from benchmarks.providers import PROVIDERS, unavailable  # noqa: E402
from benchmarks.run import time_point  # noqa: E402

DEFAULT_SIZES = {"lt-queue": 8192, "pixel": 16384, "supcon": 1024, "dim": 128}


def report(title, records):
    print(title)
    ok = {k: r["median_s"] for k, r in records.items() if r["status"] == "ok"}
    for name, r in records.items():
        if r["status"] != "ok":
            print(f"  {name:14s} {r['status']}: {r.get('note', '')}")
            continue
        line = f"  {name:14s} median {r['median_s'] * 1e3:9.2f} ms  p20 {r['p20_s'] * 1e3:9.2f}"
        line += f"  p80 {r['p80_s'] * 1e3:9.2f}"
        if "tight-floor" in ok:
            line += f"  {r['median_s'] / ok['tight-floor']:5.2f}x tight floor"
        if "dense" in ok:
            line += f"  {ok['dense'] / r['median_s']:6.2f}x faster than dense"
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", choices=sorted(SWEEPS), default="lt-queue")
    parser.add_argument("--size", type=int, help="default: the sweep's headline size")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, help="default: every provider that runs here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    device = torch.device(args.device)
    providers = args.providers or [p for p in PROVIDERS if unavailable(p, device.type) is None]
    size = args.size or DEFAULT_SIZES[args.sweep]
    case = make_case(args.sweep, size, device=device, dtype=getattr(torch, args.dtype))
    budget = dict(time_limit=600.0, budget_s=0.0, memory_bytes=int(memory_available(device) * 0.8))
    records = time_point(case, providers, device, repeats=args.repeats, **budget)
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    report(f"{SWEEPS[args.sweep].title}, {SWEEPS[args.sweep].axis} = {size}, {args.dtype}, {where}, fwd+bwd", records)


if __name__ == "__main__":
    main()
