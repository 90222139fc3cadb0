"""Peak memory growth of one forward+backward of one provider at one sweep point, run in a fresh process.

    python -m benchmarks.memory --sweep pixel --size 8192 --provider cpu [--device cpu]

prints one JSON line: peak_growth_mb (resident memory on CPU, max_memory_allocated on CUDA) and seconds (cold: the
first call, torch.compile's compilation included for 'compiled').
"""

from __future__ import annotations

import argparse
import json

import torch

from gpaco_kernels._measure import peak_growth

from .cases import SWEEPS, make_case
from .providers import PROVIDERS, phases


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", choices=sorted(SWEEPS), required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--provider", choices=PROVIDERS, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    case = make_case(args.sweep, args.size, device=args.device, dtype=getattr(torch, args.dtype))
    step = phases(args.provider, case)["fwd+bwd"]
    growth, seconds, _ = peak_growth(step, args.device)
    print(json.dumps(dict(peak_growth_mb=growth, seconds=seconds)))


if __name__ == "__main__":
    main()
