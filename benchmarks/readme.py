"""Rewrite the README's tables that quote committed records, between their markers, from the records alone.

    python -m benchmarks.readme [--check]

Records: benchmarks/results/compile_report.txt (`python -m gpaco_kernels.tools.compile_report --out ...`),
benchmarks/results/gpu_model.txt (`python -m gpaco_kernels.tools.gpu_model > ...`), and the selfcheck record of each
machine, benchmarks/results/<machine>/selfcheck.txt (`python -m gpaco_kernels.selfcheck > ...`). --check exits 1
if the README is not what the records give (nothing is written).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEADLINE_VARIANTS = {("fwd", "gpaco-logits"), ("fwd", "pixel"), ("bwd_rows", "gpaco-logits"), ("bwd_cols", "batch")}
KERNEL_NAMES = {"fwd": "forward", "bwd_rows": "row backward", "bwd_cols": "column backward"}


def compile_summary() -> str:
    lines = (RESULTS / "compile_report.txt").read_text().splitlines()
    return "\n".join(f"    {line}" for line in (lines[0], lines[-1]))


def compile_table() -> str:
    from gpaco_kernels.triton.configs import CANDIDATES

    rows = ["| kernel | variant | dtype | tile, warps, stages | registers | spills | shared |", "|---" * 7 + "|"]
    for line in (RESULTS / "compile_report.txt").read_text().splitlines()[1:-1]:
        parts = line.split()
        kind, variant, precision, dim, arch = parts[:5]
        config = " ".join(parts[5:8])
        klass = "fp32" if precision.startswith("fp32") else "half"
        first = "{}x{} w{} s{}".format(*CANDIDATES[(kind, klass)][0])
        if (kind, variant) not in HEADLINE_VARIANTS or dim != "D128" or arch != "sm_90" or config != first:
            continue
        if precision in ("fp16", "fp32-ieee"):
            continue
        regs = re.search(r"regs\s+(\d+)", line).group(1)
        spill = re.search(r"spill\s+(\d+) B", line).group(1)
        shared = re.search(r"shared\s+([\d.]+) KB", line).group(1)
        rows.append(f"| {KERNEL_NAMES[kind]} | {variant} | {precision} | {config} | {regs} | {spill} B | {shared} KB |")
    return "\n".join(rows)


def gpu_model_table() -> str:
    rows = ["| forward + backward | dtype | model | floor (3 GEMMs at peak) | model / floor |", "|---|---|---|---|---|"]
    workload = None
    for line in (RESULTS / "gpu_model.txt").read_text().splitlines():
        head = re.match(r"(\S+): A (\d+), N (\d+), K (\d+), C (\d+), D (\d+)", line)
        if head:
            name, a, n, k, c, d = head.groups()
            workload = (
                f"GPaCo LT step ({a} x [{c} \\| {n} \\| {k}], D {d})" if name == "gpaco-lt" else f"pixel loss, N = {n}"
            )
            continue
        row = re.match(r"\s+(\S+)\s+model\s+([\d.]+) us\s+floor\s+([\d.]+) us\s+\(\s*([\d.]+)x\)", line)
        if row and workload:
            dtype, model, floor, ratio = row.groups()
            rows.append(f"| {workload} | {dtype} | {float(model):.1f} us | {float(floor):.1f} us | {ratio}x |")
    return "\n".join(rows)


def selfcheck_block() -> str:
    blocks = []
    for record in sorted(RESULTS.glob("*/selfcheck.txt")):
        lines = record.read_text().splitlines()
        keep = [lines[0]] + [ln for ln in lines if ln.startswith("selfcheck:")]
        table = [ln for ln in lines if ln.startswith("  ") and ("ms" in ln or "workload" in ln or "error" in ln)]
        table = [ln for ln in table if "max rel err" not in ln]
        header = next((ln for ln in lines if ln.startswith("fwd+bwd per step")), "")
        blocks.append("\n".join(f"    {ln}" for ln in [*keep[:2], header, *table, keep[-1]]))
    return "\n\n".join(blocks)


SECTIONS = {
    "compile-summary": compile_summary,
    "compile-table": compile_table,
    "gpu-model": gpu_model_table,
    "selfcheck": selfcheck_block,
}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no markers for {name!r}")
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    readme = ROOT / "README.md"
    current = readme.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print("README.md differs from what the records give: run `python -m benchmarks.readme`")
            return 1
        return 0
    readme.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
