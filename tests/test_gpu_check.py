"""The GPU run's rehearsal: scripts/gpu_check.sh's test step, its exact selection (pytest -m gpu over its files) with
the interpreter off, run here on a machine without a GPU. Every selected test must pass or skip for want of CUDA
(helpers.NEEDS_CUDA): a test that fails here, or skips for another reason, would fail or skip by construction on a
lent GPU too, and spend its minutes on no signal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import NEEDS_CUDA

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: scripts/gpu_check.sh runs the real thing")
def test_the_gpu_runs_test_selection_passes_or_skips_for_want_of_cuda(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTEST_ADDOPTS")}
    env.update(OUT=str(tmp_path), STEPS="tests", DEADLINE="900", PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    log = (tmp_path / "log.txt").read_text()
    steps = (tmp_path / "steps.txt").read_text()
    assert "TRITON_INTERPRET=0" in (ROOT / "scripts" / "gpu_check.sh").read_text()
    assert "tests rc=0" in steps, f"{steps}\n{log[-4000:]}\n{done.stderr[-2000:]}"
    summary = re.search(r"^(\d+) passed, (\d+) skipped, (\d+) deselected in", log, re.MULTILINE)
    assert summary, f"no pytest summary of passes and skips alone (a failure or error?):\n{log[-4000:]}"
    passed, skipped, _ = map(int, summary.groups())
    assert passed > 0 and skipped > 300, summary.group(0)  # the CUDA grid skipped here, the host-only tests ran
    reasons = re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", log, re.MULTILINE)
    assert reasons, "no skip reasons in the log (-rs)"
    other = sorted({r for r in reasons if NEEDS_CUDA not in r})
    assert not other, f"skipped for another reason than a missing GPU: {other}"
