"""The ahead-of-time compile report (CI runs it in full): what it covers and how it reads spills; and the kernels
compiled (for sm_90, no GPU needed) the way torch.compile launches them."""

from __future__ import annotations

import pytest

from tools import compile_report as report

configs = pytest.importorskip("gpaco_kernels.triton.configs")

# A loop from 0x0100 back-branching at 0x0300: one spill store inside it, one load after it.
SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   STL [R1], R0 ;
        /*0100*/                   FFMA R2, R3, R4, R2 ;
        /*0200*/                   STL [R1+0x4], R2 ;
        /*0300*/              @!P0 BRA 0x100 ;
        /*0310*/                   LDL.LU R0, [R1] ;
        /*0320*/                   EXIT ;
        /*0330*/                   BRA 0x330;
"""


def test_spills_inside_loops_are_told_apart_from_cold_ones():
    assert report.spill_instructions(SASS) == (1, 2)
    assert report.spill_instructions(SASS.replace("STL [R1+0x4], R2", "FADD R2, R2, R2")) == (0, 2)


def test_every_kernel_and_autotune_candidate_is_covered():
    """Every kernel file is compiled, and every configuration the autotuner may pick with this Triton (its pruner's
    classes: precision, label sums, GPU generation, descriptor loads) for every variant it may launch, at D 128 (the
    wide kernels at WIDE_D), and the first variant of each tile kernel at every BLOCK_D."""
    import pathlib

    import gpaco_kernels.triton as package
    from gpaco_kernels.triton.launch import TMA_CHECKED_TRITON, _device_descriptors_supported, _triton_version

    def module(kind):
        return "paco_wide" if kind.startswith("wide_") else f"paco_{kind}"

    files = {p.stem for p in pathlib.Path(package.__file__).parent.glob("paco_*.py")}
    launched = {*configs.KERNELS, *configs.FIXED}
    assert set(report.VARIANTS) == launched and {module(k) for k in launched} == files
    descriptors = _device_descriptors_supported() and _triton_version() >= TMA_CHECKED_TRITON
    todo = report.cases([80, 90], [16, 32, 64, 128])
    compiled = {(c.kind, c.variant, c.precision, c.arch, c.block_d, c.config) for c in todo}
    checked = 0
    for kind in configs.KERNELS:
        wide = kind.startswith("wide_")
        tuned, classes = configs._full_autotune_configs(kind)
        for config in tuned:
            candidate = (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages)
            for precision_class, label_sums, hopper, tma in classes[config]:
                if tma and not descriptors:
                    continue
                for name in [n for n in report.PRECISIONS if report.precision_class_of(n) == precision_class]:
                    for variant, flags in report.VARIANTS[kind].items():
                        if bool(flags.get("LABEL_SUMS")) != label_sums or bool(flags.get("TMA")) != tma:
                            continue
                        case = (kind, variant, name, 90 if hopper else 80, report.WIDE_D if wide else 128, candidate)
                        assert case in compiled, case
                        checked += 1
    assert checked > 300
    for kind in ("fwd", "bwd_rows", "bwd_cols", "bwd_one_pass"):  # the first variant at every BLOCK_D
        first = next(iter(report.VARIANTS[kind]))
        assert {c.block_d for c in todo if c.kind == kind and c.variant == first} == {16, 32, 64, 128}, kind
    for kind in configs.FIXED:  # one configuration, every variant and precision, both archs
        mine = [c for c in todo if c.kind == kind]
        assert {(c.variant, c.precision, c.arch) for c in mine} == {
            (v, p, a) for v in report.VARIANTS[kind] for p in report.PRECISIONS for a in (80, 90)
        }, kind


@pytest.mark.parametrize("kind", sorted(report.VARIANTS))
def test_signatures_name_every_argument(kind):
    fn = report.kernel(kind)
    for case in report.cases([90], [32], only=[kind]):
        constexprs, _, _ = report.launch_constexprs(case)
        signature, attrs = report._signature(fn, "bf16", constexprs)
        assert list(signature) == [name for name, _ in report.kernel_arguments(fn)]
        assert {n for n, t in signature.items() if t == "constexpr"} == set(constexprs)
        assert signature["label_ptr" if kind != "epilogue" else "x_ptr"] in ("*i64", "*bf16")
        if "feat_ptr" in signature:
            assert signature["feat_ptr"] == "*bf16"


def test_a_spilling_or_oversized_kernel_fails_the_report():
    case = report.Case("fwd", "pixel", "bf16", 128, 80, (64, 64, 8, 3))
    ok = report.Result(case, registers=200, stack=0, hot_spills=0, cold_spills=0, shared=64 * 1024)
    assert ok.problems() == []
    cold = report.Result(**{**ok.__dict__, "stack": 8, "hot_spills": 0, "cold_spills": 2})
    assert cold.problems() == [] and "cold spill" in report.format_line(cold)
    assert "spills" in report.Result(**{**ok.__dict__, "stack": 8, "hot_spills": 1, "cold_spills": 1}).problems()[0]
    assert (
        "spills"
        in report.Result(
            **{**ok.__dict__, "stack": report.COLD_SPILL_LIMIT + 8, "hot_spills": 0, "cold_spills": 9}
        ).problems()[0]
    )
    assert "shared memory" in report.Result(**{**ok.__dict__, "shared": 200 * 1024}).problems()[0]
    assert "compile failed" in report.Result(ok.case, error="PTXASError: x").problems()[0]


_FP64_SCALARS = """
import triton
from triton.backends.compiler import GPUTarget
from tools import compile_report as r
done = set()
for case in r.cases([90], [64]):  # each variant's last bf16 candidate with this Triton (the smallest tile)
    if case.precision != "bf16":
        continue
    last = [c for c in r.cases([90], [64], only=[case.kind]) if c.variant == case.variant and c.precision == "bf16"][-1]
    if case != last:
        continue
    fn = r.kernel(case.kind)
    constexprs, options, _ = r.launch_constexprs(case)
    signature, attrs = r._signature(fn, "bf16", constexprs, float_type="fp64")
    compiled = triton.compile(r.ast_source(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                              options=options)
    assert "xf64>" not in compiled.asm["ttir"], (case.kind, case.variant)  # no float64 tile arithmetic
    print(case.kind, case.variant, "ok")
"""


def test_kernels_compile_with_the_fp64_float_arguments_torch_compile_passes():
    """Inductor launches a triton_op's kernels with Python floats typed fp64 (Triton's own launcher: fp32). Without
    the casts at each kernel's entry this fails to compile (the loop-carried max turns fp64), as seen on an H200."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run([sys.executable, "-c", _FP64_SCALARS], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    variants = {(c.kind, c.variant) for c in report.cases([90], [64])}  # the -tma ones where descriptors are taken
    assert {tuple(line.split()[:2]) for line in done.stdout.splitlines() if line.endswith(" ok")} == variants


def test_sass_counts_tell_the_mma_kind_and_the_per_element_work():
    sass = """
        /*0000*/                   HGMMA.64x64x16.F32.BF16 gdesc[UR4], RZ, !UPT ;
        /*0010*/              @P0 FSETP.GT.AND P1, PT, R2, R3, PT ;
        /*0020*/                   ISETP.NE.AND P2, PT, R4, RZ, PT ;
        /*0030*/                   FSEL R5, R6, RZ, P1 ;
        /*0040*/                   MUFU.EX2 R7, R8 ;
        /*0050*/                   MUFU.RSQ R9, R10 ;
"""
    counts = report.sass_counts(sass)
    assert counts == {"HGMMA": 1, "HMMA": 0, "MUFU.EX2": 1, "SETP": 2, "FSEL": 1, "mma": "wgmma"}
    assert report.sass_counts(sass.replace("HGMMA.64x64x16", "HMMA.16816"))["mma"] == "mma.sync"
    assert report.sass_counts("")["mma"] == "fma"


def test_half_precision_sm90_configurations_without_wgmma_are_told_apart():
    case = report.Case("fwd", "pixel", "bf16", 128, 90, (64, 64, 8, 3))
    base = dict(registers=200, stack=0, hot_spills=0, cold_spills=0, shared=64 * 1024)
    wgmma = report.sass_counts("        /*0000*/                   HGMMA.64x64x16.F32.BF16 gdesc[UR4], RZ, !UPT ;")
    mma_sync = report.sass_counts("        /*0000*/                   HMMA.16816.F32.BF16 R0, R4, R8, R0 ;")
    assert not report.Result(case, sass=wgmma, **base).lacks_wgmma()
    assert report.Result(case, sass=mma_sync, **base).lacks_wgmma()
    sm80 = report.Case("fwd", "pixel", "bf16", 128, 80, (64, 64, 8, 3))
    fp32 = report.Case("fwd", "pixel", "fp32-tf32", 128, 90, (32, 32, 4, 2))
    assert not report.Result(sm80, sass=mma_sync, **base).lacks_wgmma()  # sm_80 has no wgmma
    assert not report.Result(fp32, sass=mma_sync, **base).lacks_wgmma()  # float32 tiles: not asked


# A TMA load's wait: the loop 0x0100..0x0300 branches out to a retry block after EXIT, which jumps back into it.
SASS_WAIT = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0100*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P1, [UR4], R2 ;
        /*0110*/              @!P1 BRA 0x400 ;
        /*0120*/                   FFMA R2, R3, R4, R2 ;
        /*0300*/              @!P0 BRA 0x100 ;
        /*0310*/                   STL [R1], R2 ;
        /*0320*/                   LDL.LU R0, [R1] ;
        /*0330*/                   EXIT ;
        /*0400*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P1, [UR4], R2 ;
        /*0410*/              @!P1 BRA 0x400 ;
        /*0420*/                   BRA 0x120 ;
        /*0430*/                   BRA 0x430;
"""


def test_the_way_back_from_an_out_of_line_wait_is_not_a_loop():
    # the loop and the retry's spin; not 0x120..0x420, which would put the spills after the loop inside one
    assert report.sass_loops(report.sass_instructions(SASS_WAIT)) == [(0x100, 0x300), (0x400, 0x410)]
    assert report.spill_instructions(SASS_WAIT) == (0, 2)
