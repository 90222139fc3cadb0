"""The kernels with every Triton a GPU user may have: each release that a torch from the floor on pins, installed
apart, compiled ahead of time and run under the interpreter. No GPU is needed.

    python -m tools.triton_matrix [--versions 3.3.1 3.7.1] [--steps compile tests] [--every-candidate]
                                  [--cache build/tritons] [--out benchmarks/results/triton_matrix.txt]
                                  [--reports benchmarks/results/triton]

For each release: `pip install --target <cache>/<release> triton==<release>` (and the numpy its interpreter needs,
NUMPY), then, with that directory first on PYTHONPATH (beside this environment's torch):
- compile: tools/compile_report with --first (each kernel variant's first autotune candidate on that release, as
  configs.candidates gives it), in --precisions (bfloat16 and float32 with TF32), sm_80 and sm_90, D 128; with
  --every-candidate, every candidate in every precision (the whole report at D 128, ten minutes a release on 2 cores);
- tests: tests/test_triton.py and tests/test_triton_versions.py under TRITON_INTERPRET=1, after checking that the
  release imported is the one installed and that the 'triton' backend loaded with it (else the tests would skip).
One line per release goes to --out (the committed record the README's supported-versions table is made from),
followed by the failing compile lines. A release below the floor (gpaco_kernels/triton/requirements.py) is compiled
and checked to be refused by the backend, with a message naming the versions. Exits 1 when a release at or above the
floor fails a step.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Release -> the torch releases that pin it (PyPI metadata of their CUDA builds).
PINNED_BY = {
    "3.2.0": "2.6",
    "3.3.1": "2.7",
    "3.4.0": "2.8",
    "3.5.1": "2.9",
    "3.6.0": "2.10, 2.11",
    "3.7.1": "2.12, 2.13",
    "3.8.0": "2.14",
    "3.9.0": "2.15",
}
# The interpreters before 3.7 hold a loaded scalar as a one-element array and take a loop bound of it with int(),
# which numpy >= 2.4 refuses (requirements.interpreter_unsupported).
NUMPY = {release: "numpy<2.4" for release in ("3.2.0", "3.3.1", "3.4.0", "3.5.1", "3.6.0")}
TESTS = ["tests/test_triton.py", "tests/test_triton_versions.py"]
PRECISIONS = ["bf16", "fp32-tf32"]  # of the first-candidate compile (--every-candidate: all of them)


def install(release: str, cache: Path) -> Path:
    """The directory holding this release of triton (and its numpy pin), installed there when it is missing."""
    target, packages = cache / release, [f"triton=={release}"] + ([NUMPY[release]] if release in NUMPY else [])
    marker = target / ".complete"  # what was installed there, in full
    if not marker.exists() or marker.read_text() != " ".join(packages) + "\n":
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target", str(target)]
            + packages,
            check=True,
        )
        marker.write_text(" ".join(packages) + "\n")
    return target


def environment(target: Path, interpret: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(ROOT)]))
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return env


def below_floor(release: str) -> bool:
    from gpaco_kernels.triton.requirements import TRITON_FLOOR
    from gpaco_kernels.triton.requirements import release as major_minor

    return major_minor(release) < TRITON_FLOOR


def loaded_versions(target: Path, release: str) -> str:
    """'triton X, numpy Y' as imported from target, after checking that the backend loaded with that release (or,
    below the floor, that it refused it, naming the versions)."""
    if below_floor(release):
        backend = "assert 'triton' not in g.available_backends()\n" + (
            "assert 'need torch >=' in g.ops.dispatch.backend_unavailable_reason('triton')\n"
        )
    else:
        backend = "assert 'triton' in g.available_backends(), g.ops.dispatch.backend_unavailable_reason('triton')\n"
    code = (
        "import numpy, triton, gpaco_kernels as g\n"
        f"assert triton.__version__ == {release!r}, triton.__file__\n"
        + backend
        + "print(f'triton {triton.__version__}, numpy {numpy.__version__}')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=environment(target, True), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"triton {release} from {target} did not load: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout.strip()


def compile_step(
    target: Path, every_candidate: bool, report: Path | None = None, precisions=tuple(PRECISIONS)
) -> tuple[str, list[str], bool]:
    """(summary, failing lines, ok) of the compile report with this release (its record written to `report`)."""
    args = ["--dims", "128", "--jobs", str(os.cpu_count() or 1)]
    args += [] if every_candidate else ["--first", "--precisions", *precisions]
    args += ["--out", str(report)] if report else []
    done = subprocess.run(
        [sys.executable, "-m", "tools.compile_report", *args],
        env=environment(target, False), capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    report = [line for line in lines if re.match(r"\w+\s+\S+\s+\S+\s+D\d+\s+sm_\d+", line)]
    failing = [line for line in report if " FAIL" in line]
    by_arch = []
    for arch in ("sm_80", "sm_90"):
        on_arch = [line for line in report if f" {arch} " in line]
        clean = sum(1 for line in on_arch if " FAIL" not in line)
        by_arch.append(f"{arch} {clean}/{len(on_arch)}")
    scope = "every candidate" if every_candidate else f"first candidates, {' + '.join(precisions)}"
    ok = done.returncode == 0 and not failing and bool(report)
    summary = f"compile ({scope}, D128): {', '.join(by_arch)} clean"
    if done.returncode != 0 and not failing:
        summary += f" (the report exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]})"
    return summary, failing, ok


def tests_step(target: Path) -> tuple[str, bool]:
    """(pytest's summary, ok) of the interpreter tests with this release."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
        env=environment(target, True), capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-200:]
    summary = re.sub(r"\s+in [\d.]+s.*$", "", tail.strip("= "))
    return f"interpreter tests: {summary}", done.returncode == 0


def run(
    releases, steps, every_candidate: bool, cache: Path, reports: Path | None = None, precisions=tuple(PRECISIONS)
) -> tuple[list[str], bool]:  # fmt: skip
    lines, all_ok = [], True
    for release in releases:
        start = time.perf_counter()
        target = install(release, cache)
        parts, failing, ok = (
            [f"triton {release} (torch {PINNED_BY.get(release, '?')})", loaded_versions(target, release)],
            [],
            True,
        )
        if "compile" in steps:
            report = reports / f"compile_report_triton_{release}.txt" if reports else None
            summary, failing, compiled = compile_step(target, every_candidate, report, precisions)
            parts.append(summary)
            ok &= compiled
        if "tests" in steps and below_floor(release):
            parts.append("interpreter tests: not run, below the floor (the backend refuses this release)")
        elif "tests" in steps:
            summary, passed = tests_step(target)
            parts.append(summary)
            ok &= passed
        verdict = "below the floor" if below_floor(release) else ("ok" if ok else "FAILING")
        parts.append(f"{verdict} ({time.perf_counter() - start:.0f} s)")
        lines.append(" | ".join(parts))
        print(lines[-1], flush=True)
        for line in failing:
            lines.append(f"    {line}")
            print(lines[-1], flush=True)
        all_ok &= ok or below_floor(release)
    return lines, all_ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", nargs="+", default=list(PINNED_BY), help="Triton releases (default: all)")
    parser.add_argument("--steps", nargs="+", choices=["compile", "tests"], default=["compile", "tests"])
    parser.add_argument("--every-candidate", action="store_true", help="compile every candidate, every precision")
    parser.add_argument("--precisions", nargs="+", default=PRECISIONS, help="of the first-candidate compile")
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "tritons", help="where releases are installed")
    parser.add_argument("--out", type=Path, help="write the record here (benchmarks/results/triton_matrix.txt)")
    parser.add_argument("--reports", type=Path, help="write each release's compile report into this folder")
    args = parser.parse_args(argv)
    head = f"# python -m tools.triton_matrix, commit {_commit()}, {_torch()}, Python {sys.version.split()[0]}"
    print(head, flush=True)
    if args.reports:
        args.reports.mkdir(parents=True, exist_ok=True)
    lines, ok = run(args.versions, args.steps, args.every_candidate, args.cache, args.reports, args.precisions)
    if args.out:
        args.out.write_text("\n".join([head, *lines]) + "\n")
    return 0 if ok else 1


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return done.stdout.strip() or "unknown"


def _torch() -> str:
    import torch

    return f"torch {torch.__version__}"


if __name__ == "__main__":
    sys.exit(main())
