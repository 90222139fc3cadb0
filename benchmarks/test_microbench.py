"""pytest-benchmark microbenchmarks: forward, backward and forward+backward of every provider at two sizes.

    python -m pytest benchmarks/test_microbench.py --benchmark-only [--benchmark-group-by=param:point]
    python -m pytest benchmarks/test_microbench.py --benchmark-disable      # each once, as a smoke test (CI)

The runner (`python -m benchmarks`) is the side-by-side comparison; these give pytest-benchmark's statistics per
phase, e.g. to compare two commits with --benchmark-save / --benchmark-compare.
"""

from __future__ import annotations

import pytest
import torch

from .cases import make_case
from .providers import PROVIDERS, phases, unavailable

POINTS = [("lt-queue", 4096), ("pixel", 2048)]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("phase", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("point", POINTS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_provider(benchmark, point, provider, phase):
    why = unavailable(provider, torch.device(DEVICE).type)
    if why:
        pytest.skip(f"{provider}: {why}")
    case = make_case(*point, device=DEVICE)
    benchmark.group = f"{point[0]} {point[1]} {phase}"
    step = phases(provider, case)[phase]
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    if phase == "bwd":
        setup, fn = step
        benchmark.pedantic(lambda *a: (fn(*a), sync()), setup=setup, rounds=5, warmup_rounds=1)
    else:
        step()  # warm-up outside the timing (torch.compile compiles here)
        benchmark(lambda: (step(), sync()))
