"""Peak memory growth of one forward+backward of one provider at one sweep point, run in a fresh process.

    python -m benchmarks.memory --sweep pixel --size 8192 --provider cpu [--device cpu] [--dtype bfloat16]
    python -m benchmarks.memory --sweep pixel --size 65536 --provider cpu --phase forward-held --record

prints one JSON line: peak_growth_mb (resident memory on CPU, max_memory_allocated on CUDA) and seconds (cold: the
first call, torch.compile's compilation included for 'compiled'). --phase forward-held runs a forward with gradients
enabled and keeps the loss without backpropagating it (evaluation under grad), and reports also what is still held
while the loss lives (held_mb). --record appends the result to the benchmark records (kind "memory-probe").
"""

from __future__ import annotations

import argparse
import json
import uuid

import torch

from gpaco_kernels._measure import _status_kb, peak_growth

from .cases import add_point_arguments, make_case
from .machine import facts
from .providers import forward_fn, phases
from .records import RECORDS, append


def _resident_mb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return (_status_kb("VmRSS") or 0) / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_point_arguments(parser, device="cpu", dtype="float32")
    parser.add_argument("--phase", default="step", choices=["step", "forward-held"])
    parser.add_argument("--record", action="store_true", help="append the result to benchmarks/results/records.jsonl")
    args = parser.parse_args(argv)
    case = make_case(args.sweep, args.size, device=args.device, dtype=getattr(torch, args.dtype))
    result = dict(sweep=args.sweep, size=args.size, provider=args.provider, phase=args.phase)
    if args.phase == "step":
        growth, seconds, _ = peak_growth(phases(args.provider, case)["fwd+bwd"], args.device)
    else:
        forward = forward_fn(args.provider, case)
        before = _resident_mb(args.device)
        growth, seconds, loss = peak_growth(forward, args.device)
        result["held_mb"] = round(_resident_mb(args.device) - before, 1)
        assert loss.requires_grad  # the graph (and whatever it saved) is alive while the loss is
    result.update(peak_growth_mb=growth, seconds=seconds)
    if args.record:
        base = dict(run=uuid.uuid4().hex[:8], quick=False, dtype=args.dtype, machine=facts(torch.device(args.device)))
        append(RECORDS, [dict(base, kind="memory-probe", **result)])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
