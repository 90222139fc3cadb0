"""The GPU model's SASS reading (tools/gpu_model.py) on hand-written SASS: which loop is the inner loop, what its
instructions cost, and that every figure of its record is labelled an estimate."""

from __future__ import annotations

import pytest

from tools import gpu_model

SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0020*/                   FADD R3, R2, R2 ;
        /*0030*/                   SHFL.BFLY PT, R5, R3, 0x1, 0x1f ;
        /*0040*/              @P0  BRA 0x20 ;
        /*0050*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT ;
        /*0060*/                   MUFU.EX2 R6, R7 ;
        /*0070*/                   LDS.128 R8, [R9] ;
        /*0080*/                   LDSM.16.M88.4 R12, [R13] ;
        /*0090*/                   FFMA R14, R15, R16, R17 ;
        /*00a0*/              @!P1 BRA 0x50 ;
        /*00b0*/                   EXIT ;
        /*00c0*/                   BRA 0xc0 ;
"""


def test_the_inner_loop_is_the_one_with_the_tensor_core_instructions():
    mix = gpu_model.LoopMix.of(SASS)
    # the loop 0x50..0xa0 (HGMMA, MUFU, LDS.128, LDSM.x4, FFMA, BRA), not the shuffle loop 0x20..0x40 (no tensor cores)
    assert (mix.total, mix.tensor, mix.mufu, mix.kind) == (6, 1, 1, "wgmma")
    assert mix.mio == 4 + 4  # LDS.128 and LDSM .x4 hold the shared-memory pipe 4 cycles each


@pytest.mark.parametrize(
    "op,cycles",
    [("LDS", 1), ("LDS.64", 2), ("LDS.U.128", 4), ("STS.128", 4), ("LDSM.16.MT88.4", 4), ("LDSM.16.M88.2", 2),
     ("SHFL.BFLY", 1), ("FFMA", 0), ("LDG.E.128", 0)],
)  # fmt: skip
def test_shared_memory_pipe_cycles(op, cycles):
    assert gpu_model._mio_cycles(op) == cycles


def _estimate(programs, resident, kind="wgmma", config=(64, 64, 4, 3)):
    mix = gpu_model.LoopMix(total=400, tensor=8, mufu=16, kind=kind, mio=10)
    operands = "ieee" if kind == "fma" else "half"
    cycles = gpu_model.iteration_cycles(mix, warps=4, tile_flops=2 * 64 * 64 * 128, operands=operands)
    return gpu_model.KernelEstimate("fwd", config, mix, programs=programs, iterations=10, cycles=cycles,
                                    resident=resident)  # fmt: skip


# cycles of the tile's products on wgmma: 256 at the datasheet's peak, at the sustained share of it
TENSOR = 2 * 64 * 64 * 128 / (4096 * gpu_model.SUSTAINED_TENSOR_SHARE)


def test_a_kernel_estimate_is_the_busiest_resource_on_the_busiest_sm():
    e = _estimate(programs=133, resident=1)
    assert e.cycles == {"issue": 400 + 40, "mufu": 16 * 4 * 2, "tensor": pytest.approx(TENSOR)}
    # 133 programs on 132 SMs, one at a time: the busiest SM runs two rounds, each its products (TENSOR cycles)
    # waited on, then its issue at half efficiency (880 cycles)
    assert e.seconds(0.5) == pytest.approx(2 * 10 * (TENSOR + 880) / gpu_model.H200["clock_hz"])
    assert e.bound(0.5) == "latency"


def test_programs_resident_together_hide_latency_up_to_the_shared_resources():
    # 4 programs per SM, all resident at once: one round; latency TENSOR + 440 / 0.9 < 4 x 440 issue cycles
    e = _estimate(programs=4 * 132, resident=4)
    assert e.together() == 4 and e.rounds() == 1
    assert e.seconds(0.9) == pytest.approx(10 * 4 * 440 / gpu_model.H200["clock_hz"])
    assert e.bound(0.9) == "issue"
    # the same kernel one program at a time takes four rounds of its latency
    alone = _estimate(programs=4 * 132, resident=1)
    assert alone.seconds(0.9) == pytest.approx(4 * 10 * (TENSOR + 440 / 0.9) / gpu_model.H200["clock_hz"])
    # where the products are FFMA they are in the instruction count, not waited on besides
    assert _estimate(programs=132, resident=1, kind="fma").per_iteration(1.0)["latency"] == 440


def test_the_fitted_efficiency_reproduces_the_fitted_time_and_refuses_a_throughput_bound_point():
    e = _estimate(programs=133, resident=1)
    seconds = e.seconds(0.6)
    assert gpu_model.fit_efficiency(e, seconds) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="not latency-bound"):
        # 4 resident programs issue 1760 cycles per iteration: 1500 cycles is faster than any efficiency allows
        gpu_model.fit_efficiency(_estimate(programs=4 * 132, resident=4), 10 * 1500 / gpu_model.H200["clock_hz"])


def test_pick_takes_the_recorded_config_else_the_fastest():
    slow, fast = _estimate(133, 1, config=(64, 64, 8, 3)), _estimate(4 * 132, 4, config=(32, 64, 4, 3))
    assert gpu_model.pick({"fwd": [slow, fast]}, 0.7)["fwd"] is fast
    assert gpu_model.pick({"fwd": [slow, fast]}, 0.7, {"fwd": (64, 64, 8, 3)})["fwd"] is slow


def test_the_record_labels_every_figure_an_estimate():
    from benchmarks.report import gpu_model_table

    table = gpu_model_table()
    lines = table.splitlines()
    # data rows: table rows that are neither a header (the row above a |---| line) nor the |---| line itself
    data = [
        line
        for line, below in zip(lines, [*lines[1:], ""])
        if line.startswith("| ") and not below.startswith("|---") and not line.startswith("|---")
    ]
    assert len(data) >= 10, table  # calibration, goals, the two paths
    assert all("(estimate)" in r for r in data), table


def test_a_blocked_layout_gives_each_thread_its_rows_and_columns():
    layout = dict(size=[2, 2], threads=[2, 16], warps=[4, 1], order=[1, 0])
    coords = gpu_model._blocked_coords((32, 32), layout["size"], layout["threads"], layout["warps"], layout["order"],
                                       lane=0, warp=0)  # fmt: skip
    # a warp covers 4 rows x 32 columns, 4 warps 16 rows: thread 0 holds rows 0-1 and 16-17, columns 0-1
    assert sorted({i for i, _ in coords}) == [0, 1, 16, 17] and sorted({j for _, j in coords}) == [0, 1]
    lane17 = gpu_model._blocked_coords((32, 32), [2, 2], [2, 16], [4, 1], [1, 0], lane=17, warp=1)
    assert sorted({i for i, _ in lane17}) == [6, 7, 22, 23] and sorted({j for _, j in lane17}) == [2, 3]


UNSWIZZLED = (1, 1, 1, [1, 0])  # vec, perPhase, maxPhase, order


@pytest.mark.parametrize(
    "coords,swizzle,expected",
    [
        # 32 lanes, 32 consecutive floats: one wavefront, as charged
        (lambda lane: [(0, lane)], UNSWIZZLED, (1, 1)),
        # 128-bit loads of one row each, 16 rows of 128 floats: every row's 4 words sit in banks 0-3
        (lambda lane: [(lane % 16, k) for k in range(4)], UNSWIZZLED, (16, 4)),
        # the same 4 floats for every lane: served together
        (lambda lane: [(0, k) for k in range(4)], UNSWIZZLED, (1, 4)),
        # 8 rows whose 4-float groups are XORed with the row: the rows land in different banks
        (lambda lane: [(lane % 8, k) for k in range(4)], (4, 1, 8, [1, 0]), (1, 4)),
        # two instructions of 128 bits per lane, 8 rows in banks 0-3 and 4-7
        (lambda lane: [(lane % 8, k) for k in range(8)], UNSWIZZLED, (16, 8)),
    ],
)  # fmt: skip
def test_shared_wavefronts_count_the_most_words_one_bank_serves(coords, swizzle, expected):
    assert gpu_model.shared_wavefronts(coords, (16, 128), 32, swizzle) == expected


_DOT_A = "tensor<32x128xf32, #ttg.dot_op<{opIdx = 0, parent = #blocked}>>"
_DOT_B = "tensor<128x32xf32, #ttg.dot_op<{opIdx = 1, parent = #blocked}>>"
TTGIR = f"""
#blocked = #ttg.blocked<{{sizePerThread = [2, 2], threadsPerWarp = [2, 16], warpsPerCTA = [4, 1], order = [1, 0]}}>
#shared = #ttg.swizzled_shared<{{vec = 1, perPhase = 1, maxPhase = 1, order = [1, 0]}}>
#shared1 = #ttg.swizzled_shared<{{vec = 1, perPhase = 1, maxPhase = 1, order = [0, 1]}}>
  tt.func public @k() {{
    %a = ttg.local_load %x : !ttg.memdesc<32x128xf32, #shared, #smem> -> {_DOT_A} loc(#loc1)
    %r = scf.for %i = %c0 to %n step %c1 iter_args(%acc = %cst) -> (tensor<32x32xf32, #blocked>)  : i32 {{
      %a2 = ttg.local_load %x : !ttg.memdesc<32x128xf32, #shared, #smem> -> {_DOT_A} loc(#loc2)
      %b = ttg.local_load %y : !ttg.memdesc<128x32xf32, #shared1, #smem> -> {_DOT_B} loc(#loc3)
      %s = scf.if %c -> (tensor<32x32xf32, #blocked>) {{
        scf.yield %acc : tensor<32x32xf32, #blocked>
      }} else {{
        scf.yield %acc : tensor<32x32xf32, #blocked>
      }} loc(#loc4)
      %d = tt.dot %a2, %b, %s : {_DOT_A} * {_DOT_B} -> tensor<32x32xf32, #blocked> loc(#loc5)
      scf.yield %d : tensor<32x32xf32, #blocked>
    }} loc(#loc6)
    tt.return
  }}
"""


def test_fma_products_pay_the_bank_conflicts_of_their_unswizzled_operands():
    # per warp and iteration, 4 warps: A (32x128, K contiguous) is 4 rows x 32 loads of 128 bits per thread, each
    # instruction 2 distinct rows (512 B apart: the same banks) for 2 wavefronts where 4 are charged: -2 x 128;
    # B (128x32, K contiguous per column) is 2 columns x 32 loads, each 16 distinct columns in banks k..k+3 for 16
    # wavefronts where 4 are charged: +12 x 64. The load before the loop is not counted.
    assert gpu_model.fma_conflict_cycles(TTGIR, warps=4) == -2 * 128 + 12 * 64
    # no product on FMA units (the dot line's operands of an MMA layout), no added cycles
    assert gpu_model.fma_conflict_cycles(TTGIR.replace("tt.dot", "tt.other"), warps=4) == 0


def test_the_tile_sweep_sets_every_label_sums_candidate_beside_the_larger_tiles():
    from gpaco_kernels.triton import configs
    from tools import compile_report, tile_sweep

    for kind, (variant, tiles) in tile_sweep.SWEEP.items():
        assert variant in compile_report.VARIANTS[kind]
        assert set(configs.candidates(kind, "half", True)) <= set(tiles), kind
        assert any(c[0] == 128 for c in tiles) and any(c[1] == 128 for c in tiles), kind
