"""The ahead-of-time compile report (CI runs it in full): what it covers and how it reads spills. No compiling here."""

from __future__ import annotations

import pytest

from gpaco_kernels.tools import compile_report as report

paco = pytest.importorskip("gpaco_kernels.triton.paco")

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


def test_every_kernel_and_launch_config_is_covered():
    kernels = {name[len("_paco_") : -len("_kernel")] for name in dir(paco) if name.endswith("_kernel")}
    assert kernels == set(report.VARIANTS)
    todo = report.cases([80, 90], [16, 32, 64, 128])
    for kind, precision_class in paco.CONFIGS:
        dtypes = ["fp32"] if precision_class == "fp32" else ["bf16", "fp16"]
        for dtype in dtypes:
            mine = [c for c in todo if c.kind == kind and report.PRECISIONS[c.precision][0] == dtype]
            covered = {(c.arch, c.block_d) for c in mine}
            assert covered == {(a, d) for a in (80, 90) for d in (16, 32, 64, 128)}, (kind, dtype)


@pytest.mark.parametrize("kind", sorted(report.VARIANTS))
def test_signatures_name_every_argument(kind):
    fn = getattr(paco, f"_paco_{kind}_kernel")
    for flags in report.VARIANTS[kind].values():
        constexprs = dict(flags, BLOCK_M=16, BLOCK_N=16, BLOCK_D=32, UPCAST=False, PRECISION="ieee")
        signature, attrs = report._signature(fn, "bf16", constexprs)
        assert list(signature) == [name for name, _ in report.kernel_arguments(fn)]
        assert {n for n, t in signature.items() if t == "constexpr"} == set(constexprs)
        assert signature["label_ptr"] == "*i64" and signature["feat_ptr"] == "*bf16"


def test_a_spilling_or_oversized_kernel_fails_the_report():
    ok = report.Result(report.Case("fwd", "pixel", "bf16", 128, 80), registers=200, stack=0, shared=64 * 1024)
    assert ok.problems() == []
    assert "spills" in report.Result(**{**ok.__dict__, "stack": 8, "hot_spills": 0, "cold_spills": 2}).problems()[0]
    assert "shared memory" in report.Result(**{**ok.__dict__, "shared": 200 * 1024}).problems()[0]
    assert "compile failed" in report.Result(ok.case, error="PTXASError: x").problems()[0]
