"""Tiles beyond the autotune candidates: does each compile without spilling, and what would it take? An estimate.

    python -m tools.tile_sweep [--jobs 2] [--out benchmarks/results/tile_sweep.txt]

For each kernel and configuration of SWEEP (the issue's 128-row and 128-column tiles, next to today's label-sums
candidates): the compile report's verdict (tools/compile_report.py: registers, spill bytes, pass or fail) for the
kernel's pixel variant on the label-sums path at D 128, bfloat16, on sm_90 (tiles loaded by tensor descriptors, as
the eager path there) and sm_80, and the GPU model's estimate
(tools/gpu_model.py, which does not model spills: a spilling configuration's estimate is not what it would take) on
the pixel loss at N 32768, bfloat16. No GPU is needed; nothing here is a measurement.
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

# kernel -> (compile report variant, configurations (BLOCK_M, BLOCK_N, warps, stages))
SWEEP = {
    "fwd": ("pixel-sums", [(64, 32, 4, 3), (64, 64, 4, 3), (64, 64, 8, 3), (128, 64, 4, 3), (128, 64, 8, 3),
                           (64, 128, 4, 3), (64, 128, 8, 3), (128, 128, 8, 2)]),
    "bwd_rows": ("pixel-sums", [(64, 64, 4, 2), (64, 64, 8, 2), (128, 64, 4, 2), (128, 64, 8, 2), (64, 128, 8, 2)]),
    "bwd_cols": ("batch-sums", [(64, 64, 4, 2), (64, 64, 8, 2), (128, 64, 4, 2), (128, 64, 8, 2), (64, 128, 8, 2)]),
}  # fmt: skip
WORKLOAD = "pixel 32768 bf16"


def _compile(job):
    from . import compile_report as cr

    kind, variant, arch, config = job
    # Hopper runs the label-sums sweeps with tiles loaded by tensor descriptors (launch.tma_rows), sm_80 by pointers
    return cr.compile_case(cr.Case(kind, f"{variant}-tma" if arch >= 90 else variant, "bf16", 128, arch, config))


def sweep(jobs: int) -> list[str]:
    from . import gpu_model as gm

    context = multiprocessing.get_context("spawn")
    work = [
        (kind, variant, arch, c) for kind, (variant, configs) in SWEEP.items() for c in configs for arch in (90, 80)
    ]
    with ProcessPoolExecutor(max(1, jobs), mp_context=context) as pool:
        compiled = dict(zip(work, pool.map(_compile, work)))
    with ProcessPoolExecutor(max(1, jobs), mp_context=context) as pool:  # a worker keeps the tree it imported first
        efficiency, _ = gm.calibrate(pool)
    with ProcessPoolExecutor(max(1, jobs), mp_context=context) as pool:
        configs = {kind: configs for kind, (_, configs) in SWEEP.items()}
        estimates = gm.estimate(gm.GOAL_WORKLOADS[WORKLOAD], None, pool, configs=configs)
    lines = [
        f"tiles beyond the candidates: compile verdict (bf16, D 128, label sums) and ESTIMATED time on {WORKLOAD} "
        f"(python -m tools.tile_sweep; the GPU model, efficiency {efficiency:.3f}, models no spills)"
    ]
    for kind, (variant, _) in SWEEP.items():
        for e in estimates[kind]:
            verdicts = []
            for arch in (90, 80):
                r = compiled[(kind, variant, arch, e.config)]
                problems = r.problems()
                verdicts.append(f"sm_{arch} {r.registers} regs, {r.stack} B local: "
                                f"{'FAIL (' + problems[0].split(' (')[0] + ')' if problems else 'ok'}")  # fmt: skip
            label = gm.tile_label(e.config, stages=True)
            spills = bool(compiled[(kind, variant, 90, e.config)].problems())  # the estimate is of an H200
            estimate = f"estimate {e.seconds(efficiency) * 1e3:.3f} ms, {e.bound(efficiency)}-bound"
            lines.append(f"tile | {kind} {variant} | {label} | {'; '.join(verdicts)} | "
                         f"{estimate}{' (not what it would take: it spills on sm_90)' if spills else ''}")  # fmt: skip
    return lines


def main(argv=None) -> int:
    from .gpu_model import report_main

    return report_main(__doc__.splitlines()[0], sweep, argv)


if __name__ == "__main__":
    sys.exit(main())
