"""Peak resident-memory growth and time of one forward+backward step, measured in a fresh process.

    python -m tools.peak_memory --workload pixel --backend torch [--batch N] [--threads T] [--device D]

prints one JSON line: workload, backend, device, batch, peak_growth_mb, seconds, loss. On CPU the growth is the peak
resident memory during the step minus the resident memory before it (on Linux the peak is reset right before the
step through /proc/self/clear_refs); on CUDA it is torch.cuda.max_memory_allocated during the step minus the memory
allocated before it. A fresh process per measurement keeps one provider's freed-but-cached memory out of the next
one's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from gpaco_kernels._measure import peak_growth


def measure_here(workload: str, backend: str, batch=None, threads=None, device="cpu") -> dict:
    """Run one step in this process; meaningful only in a process that has not run a step before."""
    import torch

    from .workloads import step, workload_inputs

    if threads:
        torch.set_num_threads(threads)
    inputs, options = workload_inputs(workload, batch=batch, device=device)
    growth, seconds, loss = peak_growth(lambda: step(inputs, options, backend), device)
    return dict(
        workload=workload,
        backend=backend,
        device=str(device),
        batch=inputs["features"].shape[0],
        peak_growth_mb=growth,
        seconds=seconds,
        loss=loss,
    )


def measure_in_subprocess(workload: str, backend: str, batch=None, threads=None, timeout=600, device="cpu") -> dict:
    cmd = [sys.executable, "-m", "tools.peak_memory", "--workload", workload, "--backend", backend]
    cmd += ["--device", str(device)]
    if batch:
        cmd += ["--batch", str(batch)]
    if threads:
        cmd += ["--threads", str(threads)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # `-m tools.peak_memory` from the repo root
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    from .workloads import WORKLOADS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch", type=int, default=None, help="N (pixels for 'pixel'); default: the workload's")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    args = parser.parse_args(argv)
    print(json.dumps(measure_here(args.workload, args.backend, args.batch, args.threads, args.device)))


if __name__ == "__main__":
    main()
