"""An estimate, not a measurement: time of the Triton kernels on an H200 SXM, from the instructions of their loops.

    python -m tools.gpu_model [--jobs 2] [--out benchmarks/results/gpu_model.txt]

No GPU is needed. Each kernel is compiled here for sm_90 (as tools/compile_report.py does) and its SASS read: the
inner loop (the loop with the tensor-core instructions) gives, per warp and iteration, the instructions issued, the
cycles its shared-memory instructions and shuffles hold the SM's one MIO pipe (tools.gpu_model._mio_cycles;
for products on FMA units plus the bank conflicts of their unswizzled operands, from the layouts of the Triton GPU
IR: fma_conflict_cycles), the MUFU.EX2 count, and the tile's tensor-core FLOPs. An SM runs `together` programs
at once (its occupancy, from registers, warps and shared memory, or fewer where the grid is small), and one
iteration of them takes

    cycles = max(tensor + issue / efficiency,                  one program alone: latency
                 together x issue, together x MUFU, together x tensor)     the SM's shared resources, full

    issue = instructions x warps / 4 schedulers + MIO cycles x warps,  MUFU = MUFU.EX2 x warps x 32 / 16 per clock,
    tensor = tile FLOPs / tensor-core FLOPs per clock.

The first term is a program on its own: its products are waited on before its elementwise work reads them, and with
two warps or fewer per scheduler its dependent instructions fill only the share `efficiency` of the issue slots.
Programs resident together hide one another's latency, up to the resources they share. A kernel takes
ceil(ceil(programs / 132 SMs) / together) x iterations x cycles at 1.83 GHz, on the grid of the pixel and SupCon
workloads (no column split there), for autotune's pick: the one the H200 log recorded (MEASURED_PICKS), else the
candidate the model finds fastest. One constant is fitted: `efficiency`, on the forward kernel of the committed H200
profile (pixel loss, N 32768, bf16); the other measured points (the two backward kernels, and float32 steps with
TF32 off) check it. The model runs on the kernels those records timed (git archive of MEASURED_COMMIT) for the
calibration, then on today's for the goals. Left out: the class block's loop (150 of 32918 columns), the small
kernels (label sums, finalize, epilogue), launch and host time, memory stalls. The SASS is triton's of this machine;
the H200 runs compiled with triton 3.6. `schedule` and `floor_seconds` keep the FLOP roofline of each launch (a lower
bound).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# H100 SXM5 published peaks (dense, no sparsity).
H100 = dict(
    sms=132,
    clock_hz=1.83e9,
    # fp32-tf32x3: three TF32 products per float32 product (float32 with TF32 disallowed)
    flops={"bf16": 989e12, "fp16": 989e12, "fp32-tf32": 495e12, "fp32-tf32x3": 495e12 / 3},
    exp_per_clock_per_sm=16,  # special-function units (MUFU.EX2): 4 per SM sub-partition
    hbm_bytes_per_s=3.35e12,
)
ITEM_BYTES = {"bf16": 2, "fp16": 2, "fp32-tf32": 4, "fp32-tf32x3": 4}


@dataclass
class Launch:
    kernel: str
    programs: int
    flops: float  # per program
    exps: float  # per program
    unique_bytes: float  # whole launch

    def seconds(self, dtype: str, gpu=H100) -> float:
        sm_flops = gpu["flops"][dtype] / gpu["sms"]
        sm_exps = gpu["exp_per_clock_per_sm"] * gpu["clock_hz"]
        per_program = max(self.flops / sm_flops, self.exps / sm_exps)
        waves = math.ceil(self.programs / gpu["sms"])
        return max(waves * per_program, self.unique_bytes / gpu["hbm_bytes_per_s"])


def schedule(sizes: dict, dtype: str, gpu=H100) -> list[Launch]:
    """The kernel launches of one forward+backward of fused_paco_loss on these sizes (features and center logits
    requiring grad for 'gpaco-lt'; features and fused centers for 'pixel' when centers is set)."""
    from gpaco_kernels.triton import configs, launch

    A, N, K, C, D = sizes["anchors"], sizes["batch"], sizes["queue"], sizes["classes"], sizes["dim"]
    fused_centers = sizes.get("centers", False)  # class logits from <f, w_c> (a dot) instead of given S
    b = ITEM_BYTES[dtype]
    kind = {"fp32-tf32": "fp32", "fp32-tf32x3": "fp32x3"}.get(dtype, "half")
    fwd, rows, cols = (configs.CANDIDATES[(k, kind)][0] for k in ("fwd", "bwd_rows", "bwd_cols"))
    block_d = max(16, 1 << (D - 1).bit_length())
    dot_cols = N + K + (C if fused_centers else 0)  # columns whose logits come from a product with the anchors
    total = N + K + C
    class_bytes = C * block_d * b if fused_centers else A * C * b  # centers W, or the given logits S
    inputs = (N + K) * D * b + class_bytes + (N + K) * 8

    def row_launch(name, conf, products, extra_bytes):
        """A row kernel on its launcher's grid (anchor blocks x column splits): each program runs `products` tile
        products over its share of the columns; extra_bytes(splits) is what it writes beyond reading the inputs."""
        bm = conf[0]
        splits = math.ceil(total / launch.column_split(A, total, kind, gpu["sms"]))
        row_blocks = math.ceil(A / bm)
        return Launch(
            name,
            row_blocks * splits,
            flops=products * 2 * bm * block_d * dot_cols / splits,
            exps=bm * total / splits,
            unique_bytes=inputs + extra_bytes(splits),
        )

    launches = [
        # + the splits' partial (m, z, sum w l, P)
        row_launch("fwd", fwd, 1, lambda splits: 4 * splits * A * 4),
        # logits recomputed, then H X; + saved (lse, a, 1 / P), the splits' parts of dAnchors, dS
        row_launch(
            "bwd_rows", rows, 2, lambda splits: 3 * A * 4 + splits * A * D * 4 + (0 if fused_centers else A * C * b)
        ),
    ]
    bn = cols[1]
    for name, ncols in (("bwd_cols batch", N), ("bwd_cols centers", C if fused_centers else 0)):
        if ncols:
            launches.append(
                Launch(
                    name,
                    math.ceil(ncols / bn),
                    flops=2 * 2 * bn * block_d * A,  # logits recomputed, then G^T A
                    exps=bn * A,
                    unique_bytes=A * D * b + ncols * D * b + 3 * A * 4 + ncols * D * 4,
                )
            )
    return launches


def floor_seconds(sizes: dict, dtype: str, gpu=H100) -> float:
    """The three products of the step at the GPU's peak: logits A x (N + K [+ C]), G C, G^T A."""
    A, N, K, C, D = sizes["anchors"], sizes["batch"], sizes["queue"], sizes["classes"], sizes["dim"]
    cols = N + K + (C if sizes.get("centers") else 0)
    return 3 * 2 * A * cols * D / gpu["flops"][dtype]


# ---------------------------------------------------------------------------------------------------------------------
# The instruction-level estimate: what one iteration of a kernel's inner loop costs an SM, read from its SASS.
# ---------------------------------------------------------------------------------------------------------------------

# H200 SXM (the GPU of the committed records; an H100 SXM has the same SMs and clocks): per-SM rates per clock.
# The tensor cores' sustained rate: the bfloat16 GEMM peak measured on the H200 (gpu-check-run2-summary.txt: 798
# TFLOP/s, torch.matmul; run 1 gave 745) against the datasheet's 989. No product of the loss kernels can beat what
# cuBLAS sustains on the same machine, so every tensor-core rate below is the datasheet's times this share.
SUSTAINED_TENSOR_SHARE = 798 / 989

H200 = dict(
    name="H200 SXM",
    sms=132,
    clock_hz=1.83e9,
    schedulers=4,  # warp instructions issued per clock per SM (one per sub-partition)
    mufu_lanes=16,  # MUFU.EX2 results per clock per SM
    # tensor-core FLOPs per clock per SM by MMA kind and operand type: wgmma at the dense peak (989 TFLOP/s bf16)
    # times SUSTAINED_TENSOR_SHARE, mma.sync at two thirds of wgmma on Hopper, float32 FMA on the 128 FP32 lanes;
    # 3xTF32 is three TF32 products
    tensor={
        ("wgmma", "half"): 4096 * SUSTAINED_TENSOR_SHARE,
        ("wgmma", "tf32"): 2048 * SUSTAINED_TENSOR_SHARE,
        ("wgmma", "tf32x3"): 2048 / 3 * SUSTAINED_TENSOR_SHARE,
        ("mma.sync", "half"): 2731 * SUSTAINED_TENSOR_SHARE,
        ("mma.sync", "tf32"): 1365 * SUSTAINED_TENSOR_SHARE,
        ("mma.sync", "tf32x3"): 1365 / 3 * SUSTAINED_TENSOR_SHARE,
        ("fma", "ieee"): 256,
    },  # fmt: skip
    registers=65536,
    max_warps=64,
    shared=227 * 1024,
)


@dataclass
class LoopMix:
    """Instruction counts of one loop body of a kernel's SASS (per warp and iteration)."""

    total: int
    tensor: int  # HGMMA + HMMA
    mufu: int  # MUFU.EX2
    kind: str  # wgmma | mma.sync | fma
    mio: float = 0.0  # cycles of the SM's shared-memory pipe per warp and iteration (LDS/LDSM/STS/SHFL, _mio_cycles)
    conflicts: float = 0.0  # cycles bank conflicts add to `mio` (FMA products: fma_conflict_cycles)

    @classmethod
    def of(cls, sass: str) -> LoopMix:
        """The inner loop that does the tile work: the loop with the most tensor-core instructions (the most FFMA
        where the products run on FMA units); among equals the shortest (a sweep's unmasked tiles, which run on all
        but the few tiles that need masks). A loop is the address range from a backward branch's target to it; its
        body is counted whole, branches inside included (an upper bound for code that runs on some tiles)."""
        from .compile_report import sass_instructions, sass_loops

        lines = sass_instructions(sass)
        loops = sass_loops(lines)
        best = None
        for lo, hi in loops:
            body = [op for addr, op, _ in lines if lo <= addr <= hi]
            hgmma = sum(op.startswith("HGMMA") for op in body)
            hmma = sum(op.startswith("HMMA") for op in body)
            ffma = sum(op.startswith("FFMA") for op in body)
            mix = cls(len(body), hgmma + hmma, sum(op == "MUFU.EX2" for op in body),
                      "wgmma" if hgmma else ("mma.sync" if hmma else "fma"),
                      sum(_mio_cycles(op) for op in body))  # fmt: skip
            key = (mix.tensor, ffma if not mix.tensor else 0, -mix.total)
            if best is None or key > best[0]:
                best = (key, mix)
        if best is None:
            raise ValueError("no loop in this SASS")
        return best[1]


def _mio_cycles(op: str) -> float:
    """Cycles one warp instruction holds the SM's shared-memory pipe (MIO: 128 bytes per clock for the whole SM, one
    per clock for a shuffle): LDS/STS of 32/64/128 bits 1/2/4, LDSM/STSM .x1/.x2/.x4 1/2/4, SHFL 1; 0 otherwise."""
    if op.startswith("SHFL"):
        return 1.0
    if op.startswith(("LDSM", "STSM")):
        return {"4": 4.0, "2": 2.0}.get(op.rsplit(".", 1)[-1], 1.0)
    if op.startswith(("LDS", "STS")):
        return 4.0 if ".128" in op else (2.0 if ".64" in op else 1.0)
    return 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Shared-memory bank conflicts of float32 FMA products. A tensor-core product reads its operands from swizzled
# shared memory (ldmatrix, wgmma descriptors) without conflicts, so the LDS cycles of its SASS are what the pipe
# spends. A dot on FMA units (a dot operand of a blocked layout) loads each thread's rows and columns from an
# unswizzled buffer: lanes that read different rows of one column of banks are served one after another. SASS
# addresses are in registers, so the conflicts are computed from the layouts of the Triton GPU IR instead.
# ---------------------------------------------------------------------------------------------------------------------

_BLOCKED = re.compile(r"#(\w+) = #ttg\.blocked<\{sizePerThread = \[([\d, ]+)\], threadsPerWarp = \[([\d, ]+)\], "
                      r"warpsPerCTA = \[([\d, ]+)\], order = \[([\d, ]+)\]")  # fmt: skip
_SHARED = re.compile(r"#(\w+) = #ttg\.swizzled_shared<\{vec = (\d+), perPhase = (\d+), maxPhase = (\d+), "
                     r"order = \[([\d, ]+)\]")  # fmt: skip
_MEMDESC = r"!ttg\.memdesc<(\d+)x(\d+)x(\w+), #(\w+)"
_LOCAL_LOAD = re.compile(r"ttg\.local_load .*: " + _MEMDESC + r".*-> tensor<\d+x\d+x\w+, #ttg\.dot_op<\{opIdx = (\d), "
                         r"parent = #(\w+)\}>")  # fmt: skip
_LOCAL_ALLOC = re.compile(r"ttg\.local_alloc %\S+ : \(tensor<\d+x\d+x\w+, #(\w+)>\) -> " + _MEMDESC)
_FMA_DOT = re.compile(r"tt\.dot .*: tensor<(\d+)x(\d+)x\w+, #ttg\.dot_op<\{opIdx = 0, parent = #(\w+)\}>> \* "
                      r"tensor<\d+x(\d+)x\w+")  # fmt: skip
_BITS = {"f32": 32, "f16": 16, "bf16": 16}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _blocked_coords(shape, size, threads, warps, order, lane: int, warp: int) -> list[tuple[int, int]]:
    """The (row, column) elements one thread of a 2-D blocked layout holds (a shape smaller than the layout's tile
    wraps round: those elements are held by several threads)."""

    def split(index, counts):  # the thread's (or warp's) coordinate per dim, order[0] fastest
        out = [0, 0]
        for dim in order:
            out[dim], index = index % counts[dim], index // counts[dim]
        return out

    t, w = split(lane, threads), split(warp, warps)
    per_dim = []
    for d in range(2):
        tile = size[d] * threads[d] * warps[d]
        reps = max(1, -(-shape[d] // tile))
        per_dim.append(sorted({(r * tile + w[d] * size[d] * threads[d] + t[d] * size[d] + e) % shape[d]
                               for r in range(reps) for e in range(size[d])}))  # fmt: skip
    return [(i, j) for i in per_dim[0] for j in per_dim[1]]


def _shared_offset(i: int, j: int, shape, vec: int, per_phase: int, max_phase: int, order) -> int:
    """Element offset of (i, j) in a swizzled shared buffer: order[0] the contiguous dim; each row of it has its
    vec-element groups XORed with (row // perPhase) % maxPhase."""
    coord = (i, j)
    inner, outer = coord[order[0]], coord[order[1]]
    phase = (outer // per_phase) % max_phase
    return outer * shape[order[0]] + ((inner // vec) ^ phase) * vec + inner % vec


def shared_wavefronts(coords_of_lane, shape, bits: int, swizzle) -> tuple[float, float]:
    """(wavefronts, what the SASS reading charges for the same instructions) of one warp moving its elements to or
    from a shared buffer: each lane's elements (coords_of_lane(lane), the same count for every lane) go in vectors of
    elements contiguous in shared memory (up to 128 bits, aligned), one instruction per vector index; an instruction
    takes as many wavefronts as the most distinct 32-bit words any one of the 32 banks holds among the lanes'
    addresses (lanes reading the same word are served together). _mio_cycles charges vector bits / 32 per instruction
    (32 lanes of distinct, conflict-free addresses)."""
    vec, per_phase, max_phase, order = swizzle
    most = 128 // bits
    if max_phase > 1:
        most = min(most, vec)
    lanes = []
    for lane in range(32):
        offsets = sorted(_shared_offset(i, j, shape, vec, per_phase, max_phase, order) for i, j in coords_of_lane(lane))
        vectors, k = [], 0
        while k < len(offsets):  # greedy: the longest aligned run of consecutive offsets, up to `most` elements
            n = most
            while n > 1 and not (offsets[k] % n == 0 and offsets[k : k + n] == list(range(offsets[k], offsets[k] + n))):
                n //= 2
            vectors.append(offsets[k : k + n])
            k += n
        lanes.append(vectors)
    wavefronts = charged = 0.0
    for index in range(min(len(v) for v in lanes)):
        words = {o * bits // 32 for v in lanes for o in v[index]}
        banks = {}
        for word in words:
            banks[word % 32] = banks.get(word % 32, 0) + 1
        wavefronts += max(banks.values())
        charged += max(1.0, len(lanes[0][index]) * bits / 32)
    return wavefronts, charged


def _held(shape, layout, operand, lane: int, warp: int) -> list[tuple[int, int]]:
    """The elements of a (rows, columns) tensor one thread holds: its share of a blocked layout (operand None), or as
    an FMA product's operand of that parent layout, the parent's rows (operand 0, A) or columns (operand 1, B) of
    the thread, each with the whole reduction dim."""
    held = _blocked_coords(shape, *layout, lane, warp)
    if operand == 0:
        return [(i, k) for i in sorted({i for i, _ in held}) for k in range(shape[1])]
    if operand == 1:
        return [(k, j) for j in sorted({j for _, j in held}) for k in range(shape[0])]
    return held


def _added_cycles(shape, layout, operand, dtype: str, swizzle, warps: int) -> float:
    """Wavefronts less what the SASS reading charged, summed over the warps, of one transfer between registers and a
    shared buffer (_held, shared_wavefronts)."""
    total = 0.0
    for warp in range(warps):
        waves, charged = shared_wavefronts(functools.partial(_held, shape, layout, operand, warp=warp), shape,
                                           _BITS[dtype], swizzle)  # fmt: skip
        total += waves - charged
    return total


def fma_conflict_cycles(ttgir: str, warps: int) -> float:
    """Shared-memory cycles per warp and iteration that bank conflicts add to the inner loop of a kernel whose
    products run on FMA units: over the loop with the most FMA-product FLOPs, its dot-operand loads (local_load to a
    blocked parent's dot operand) and its stores of blocked tensors to shared memory (local_alloc), the wavefronts
    each takes (shared_wavefronts) less what the SASS reading charged them, averaged over the warps. 0 where no
    product runs on FMA units."""
    blocked = {m[0]: tuple(_ints(x) for x in m[1:]) for m in _BLOCKED.findall(ttgir)}
    shared = {m[0]: (int(m[1]), int(m[2]), int(m[3]), _ints(m[4])) for m in _SHARED.findall(ttgir)}
    loops, stack = {}, []  # loop number -> [FMA-product FLOPs, added cycles summed over the warps]
    for line in ttgir.splitlines():
        text = line.strip()
        if text.startswith("}"):  # a region closes (and, with "} else {", the next opens)
            if stack:
                stack.pop()
            if text.endswith("{"):
                stack.append(None)
            continue
        if text.endswith("{"):
            start = len(loops)
            if "scf.for" in text:
                loops[start] = [0.0, 0.0]
            stack.append(start if "scf.for" in text else None)
            continue
        loop = next((n for n in reversed(stack) if n is not None), None)
        if loop is None:
            continue
        if (dot := _FMA_DOT.search(line)) and dot[3] in blocked:
            loops[loop][0] += 2 * int(dot[1]) * int(dot[2]) * int(dot[4])
        load, alloc = _LOCAL_LOAD.search(line), _LOCAL_ALLOC.search(line)
        if load and load[6] in blocked and load[4] in shared:  # a dot operand read for FMA products
            rows, cols, dtype, layout, op_idx, parent = load.groups()
            operand = 0 if op_idx == "0" else 1
            loops[loop][1] += _added_cycles((int(rows), int(cols)), blocked[parent], operand, dtype, shared[layout],
                                            warps)  # fmt: skip
        elif alloc and alloc[1] in blocked and alloc[5] in shared:  # a blocked tensor stored for a product
            source, rows, cols, dtype, layout = alloc.groups()
            loops[loop][1] += _added_cycles((int(rows), int(cols)), blocked[source], None, dtype, shared[layout],
                                            warps)  # fmt: skip
    flops, extra = max(loops.values(), default=(0.0, 0.0))
    return extra / warps if flops else 0.0


def occupancy(registers: int, warps: int, shared: int, gpu=H200) -> int:
    """Programs (CTAs) resident per SM: registers (allocated per warp in units of 256), warps, shared memory."""
    per_warp = -(-registers * 32 // 256) * 256
    by_regs = gpu["registers"] // (per_warp * warps)
    by_warps = gpu["max_warps"] // warps
    by_shared = gpu["shared"] // max(shared, 1)
    return max(1, min(by_regs, by_warps, by_shared))


def iteration_cycles(mix: LoopMix, warps: int, tile_flops: float, operands: str, gpu=H200) -> dict:
    """Cycles one SM spends on one loop iteration of one program, by resource: instruction issue (every warp issues
    the loop body on its sub-partition's scheduler, plus the cycles its shared-memory instructions and shuffles hold
    the SM's one MIO pipe; at full efficiency here, KernelEstimate.seconds divides by the fitted share), MUFU (32
    lanes per warp instruction) and tensor cores."""
    issue = mix.total * warps / gpu["schedulers"] + (mix.mio + mix.conflicts) * warps
    mufu = mix.mufu * warps * 32 / gpu["mufu_lanes"]
    tensor = tile_flops / gpu["tensor"][(mix.kind, operands)]
    return dict(issue=issue, mufu=mufu, tensor=tensor)


@dataclass
class KernelEstimate:
    kernel: str
    config: tuple
    mix: LoopMix
    programs: int
    iterations: int
    cycles: dict  # per iteration, by resource
    resident: int

    def together(self) -> int:
        """Programs one SM runs at a time: its occupancy, or fewer when the grid gives it fewer."""
        return min(self.resident, math.ceil(self.programs / H200["sms"]))

    def rounds(self) -> int:
        """Rounds of `together` programs the busiest SM runs: programs spread evenly, ceil(programs / SMs) each."""
        return math.ceil(math.ceil(self.programs / H200["sms"]) / self.together())

    def waited(self) -> float:
        """Tensor-core cycles a program waits on before its elementwise work: 0 where the products are FFMA (kind fma),
        which are among its instructions already."""
        return 0.0 if self.mix.kind == "fma" else self.cycles["tensor"]

    def per_iteration(self, efficiency: float) -> dict:
        """Cycles one SM spends on one loop iteration of the programs it runs together, by limit:

        - latency: one program alone. Its products are waited on before the tile's elementwise work uses them, so a
          program's iteration is its tensor-core time, then its instructions at the fitted share `efficiency` of
          the issue slots (with two warps or fewer per scheduler, dependent instructions leave slots empty). Where
          the products are FFMA (kind fma) they are among the instructions already.
        - issue, mufu, tensor: the SM's shared resources, full, for all the programs it runs together.

        Programs resident together overlap one another's latency, up to the shared resources."""
        together = self.together()
        return dict(latency=self.waited() + self.cycles["issue"] / efficiency,
                    **{k: together * v for k, v in self.cycles.items()})  # fmt: skip

    def seconds(self, efficiency: float) -> float:
        """The largest limit is the time (the others overlap with it), on the busiest SM."""
        cycles = max(self.per_iteration(efficiency).values())
        return self.rounds() * self.iterations * cycles / H200["clock_hz"]

    def bound(self, efficiency: float) -> str:
        cycles = self.per_iteration(efficiency)
        return max(cycles, key=cycles.get)


def _compile_worker(job: tuple) -> tuple:
    """(LoopMix, registers, shared bytes) of one kernel compiled for sm_90, in a fresh process: job = (source root
    or None, kind, constexprs, dtype, num_warps, num_stages). The source root is a checkout whose gpaco_kernels is
    imported instead of this one (the kernels a committed record measured)."""
    source, kind, constexprs, dtype, num_warps, num_stages = job
    if source:
        sys.path.insert(0, source)
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget

    import gpaco_kernels

    from . import compile_report as cr

    where = os.path.dirname(os.path.dirname(os.path.abspath(gpaco_kernels.__file__)))
    if source and os.path.abspath(source) != where:  # a worker of another tree's pool
        raise RuntimeError(f"this worker imported gpaco_kernels from {where}, not {source}")
    fn = cr.kernel(kind)
    names = {name for name, is_constexpr in cr.kernel_arguments(fn) if is_constexpr}
    constexprs = {k: v for k, v in constexprs.items() if k in names}
    signature, attrs = cr._signature(fn, dtype, constexprs)
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=num_stages)
    )
    cubin = compiled.asm["cubin"]
    registers, _ = cr._resource_usage(cr._cuobjdump(cubin, "--dump-resource-usage"))
    mix = LoopMix.of(cr._cuobjdump(cubin, "-sass"))
    if mix.kind == "fma":
        mix.conflicts = fma_conflict_cycles(compiled.asm["ttgir"], num_warps)
    return mix, registers, compiled.metadata.shared


@dataclass(frozen=True)
class Workload:
    """One measured or goal point: a loss step's sizes and the kernels' flags."""

    name: str
    anchors: int
    batch: int
    classes: int
    dtype: str  # bf16 | fp32
    precision: str  # tl.dot input_precision: tf32 for half inputs, ieee / tf32 / tf32x3 for float32
    flags: dict  # the row kernels' constexprs (both trees' names; each kernel takes the ones it has)
    label_sums: bool = False
    tma: bool = False  # tiles loaded by tensor descriptors (launch.tma_rows: the eager path on Hopper)


PIXEL_FLAGS = dict(HAS_CLASSES=True, FROM_LOGITS=True, HAS_BIAS=False, EXCLUDE=False, HAS_BATCH=True,
                   HAS_QUEUE=False, NORMALIZE=False, NEED_LOGITS=True, REDUCTION=2)  # fmt: skip
SUPCON_FLAGS = dict(PIXEL_FLAGS, HAS_CLASSES=False, FROM_LOGITS=False, NEED_LOGITS=False)

# The kernel times of the committed H200 records (benchmarks/results/nvidia-h200/): the per-kernel profile of the
# pixel loss at N 32768 bf16 (profile-run2.txt, `python -m benchmarks.profile_step --sweep pixel --size 32768`), and
# the whole fused step of the pixel loss in float32 with TF32 off (records.jsonl, run f476647a: the step's wall
# time, which includes ~3 ms of host work at these sizes, see the LT step's profile). Both runs: kernels of commit
# 9574aa6 (its gpaco_kernels/triton is the same as ae6d1ad's).
MEASURED_COMMIT = "9574aa6"
MEASURED = [
    (Workload("pixel 32768", 32768, 32768, 150, "bf16", "tf32", PIXEL_FLAGS), "fwd", 5.574e-3),
    (Workload("pixel 32768", 32768, 32768, 150, "bf16", "tf32", PIXEL_FLAGS), "bwd_rows", 3.360e-3),
    (Workload("pixel 32768", 32768, 32768, 150, "bf16", "tf32", PIXEL_FLAGS), "bwd_cols", 2.446e-3),
    (Workload("pixel 16384", 16384, 16384, 150, "fp32", "ieee", PIXEL_FLAGS), "step", 49.39e-3),
    (Workload("pixel 8192", 8192, 8192, 150, "fp32", "ieee", PIXEL_FLAGS), "step", 13.31e-3),
]
# Autotune's picks on the H200 for the measured kernels, where its log kept them: gpu-check-run1-summary.txt, the
# pixel loss at N 16384 bf16 (the same kernels). The profile at N 32768 (profile-run2.txt) was written with
# autotune's lines dropped, so its picks are taken to be those of N 16384, one bucket down. The float32 picks were
# not logged: the model takes its fastest candidate there.
MEASURED_PICKS = {
    ("pixel 32768", "bf16"): {"fwd": (64, 64, 8, 3), "bwd_rows": (32, 64, 4, 2), "bwd_cols": (64, 32, 4, 2)},
}
CALIBRATION_FIT = ("pixel 32768", "fwd")  # the point the issue efficiency is fitted on
TOLERANCE = 0.35  # the model is trusted when every other measured point is within this


def candidates(kind: str, w: Workload, source: str | None) -> list[tuple]:
    """The autotune candidates (BLOCK_M, BLOCK_N, warps, stages) of a kernel for a workload, read from the
    configs.py of the source tree."""
    import importlib.util

    root = source or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("_configs", os.path.join(root, "gpaco_kernels/triton/configs.py"))
    configs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(configs)
    klass = "half" if w.dtype != "fp32" else ("fp32x3" if w.precision == "tf32x3" else "fp32")
    if (kind, klass) not in configs.CANDIDATES:  # a tree without the class (3xTF32 came later)
        klass = "fp32"
    if hasattr(configs, "candidates"):  # per path (label sums) since the label-sums kernels
        import inspect

        if "tma" in inspect.signature(configs.candidates).parameters:  # tiles by descriptors since TMA
            return list(configs.candidates(kind, klass, w.label_sums, 90, w.tma))
        return list(configs.candidates(kind, klass, w.label_sums))
    return list(configs.CANDIDATES[(kind, klass)])


STEP_KERNELS = ("fwd", "bwd_rows", "bwd_cols")  # the tile kernels of a step with the two-kernel backward


def _tile_jobs(w: Workload, source: str | None, kinds=STEP_KERNELS, configs: dict | None = None) -> list[tuple]:
    jobs = []
    for kind in kinds:
        for config in (configs or {}).get(kind) or candidates(kind, w, source):
            block_m, block_n, warps, stages = config
            flags = dict(w.flags, LABEL_SUMS=w.label_sums, BATCH_BY_COLUMNS=False, TMA=w.tma)
            if kind in ("bwd_cols", "bwd_one_pass"):  # the batch columns; the one pass adds their dAnchors part
                flags = dict(SEGMENT=1, HAS_BIAS=False, EXCLUDE=False, NORMALIZE=False, REDUCTION=2, FINISH=False,
                             LABEL_SUMS=w.label_sums, ANCHOR_GRAD=kind == "bwd_one_pass", TMA=w.tma)  # fmt: skip
            constexprs = dict(flags, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=128, UPCAST=False,
                              PRECISION=w.precision)  # fmt: skip
            jobs.append((kind, config, (source, kind, constexprs, w.dtype, warps, stages)))
    return jobs


def estimate(w: Workload, source: str | None = None, pool=None, kinds=STEP_KERNELS, configs=None) -> dict:
    """kernel -> the KernelEstimate of every autotune candidate for a workload (or of `configs`: kernel -> its
    configurations): the batch columns' inner loop of each kernel, on the grid its launcher makes (one column split:
    these workloads have enough anchor blocks). The class block's loop (150 of 32918 columns) is left out. `pick`
    chooses among them. Spills are not modelled: compile_report says which configurations spill."""
    jobs = _tile_jobs(w, source, kinds, configs)
    results = list(pool.map(_compile_worker, [job for _, _, job in jobs]))
    operands = "half" if w.dtype != "fp32" else w.precision
    estimates = {}
    for (kind, config, _), (mix, registers, shared) in zip(jobs, results):
        block_m, block_n, warps, _ = config
        products = {"fwd": 1, "bwd_one_pass": 3}.get(kind, 2)
        tile_flops = products * 2 * block_m * block_n * 128
        if kind in ("bwd_cols", "bwd_one_pass"):
            programs, iterations = math.ceil(w.batch / block_n), math.ceil(w.anchors / block_m)
        else:
            programs, iterations = math.ceil(w.anchors / block_m), math.ceil(w.batch / block_n)
        estimates.setdefault(kind, []).append(
            KernelEstimate(kind, config, mix, programs, iterations,
                           iteration_cycles(mix, warps, tile_flops, operands), occupancy(registers, warps, shared))
        )  # fmt: skip
    return estimates


def pick(estimates: dict, efficiency: float, picks: dict | None = None) -> dict:
    """kernel -> the candidate autotune runs: the one in `picks` (kernel -> config, as recorded on the GPU), else the
    fastest by the model at `efficiency`."""
    chosen = {}
    for kind, candidates in estimates.items():
        recorded = (picks or {}).get(kind)
        if recorded is not None:
            chosen[kind] = next(e for e in candidates if e.config == recorded)
        else:
            chosen[kind] = min(candidates, key=lambda e: e.seconds(efficiency))
    return chosen


def fit_efficiency(e: KernelEstimate, seconds: float) -> float:
    """The issue efficiency at which `e` takes `seconds`: its latency limit solved for the efficiency. Refused where
    the shared resources alone take longer than `seconds` (no efficiency reproduces the point) or where the solved
    efficiency is not a share of the slots."""
    cycles = seconds * H200["clock_hz"] / (e.rounds() * e.iterations)
    shared = max(e.together() * v for v in e.cycles.values())
    efficiency = e.cycles["issue"] / (cycles - e.waited()) if cycles > e.waited() else math.inf
    if shared > cycles or not 0 < efficiency <= 1:
        raise ValueError(f"{e.kernel} {e.config} in {seconds * 1e3:.3f} ms is not latency-bound: its shared resources "
                         f"take {shared:.0f} cycles per iteration, the time allows {cycles:.0f}")  # fmt: skip
    return efficiency


def measured_tree(commit: str) -> str:
    """A temporary directory holding gpaco_kernels as of `commit` (git archive): the kernels the records timed."""
    root = tempfile.mkdtemp(prefix=f"gpaco-{commit}-")
    archive = subprocess.run(["git", "archive", commit, "gpaco_kernels"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", root], input=archive, check=True)
    return root


def calibrate(pool) -> tuple[float, list[dict]]:
    """(the fitted issue efficiency, one row per measured point: model, measurement, error), the model run on the
    kernels the records timed, with autotune's recorded picks. The efficiency is fitted on CALIBRATION_FIT alone;
    every other row is a check."""
    source = measured_tree(MEASURED_COMMIT)
    estimates = {}
    for w, _, _ in MEASURED:
        if w.name not in estimates:
            estimates[w.name] = estimate(w, source, pool)
    fit = next(x for x in MEASURED if (x[0].name, x[1]) == CALIBRATION_FIT)
    fitted = pick(estimates[fit[0].name], 1.0, MEASURED_PICKS.get((fit[0].name, fit[0].dtype)))[fit[1]]
    efficiency = fit_efficiency(fitted, fit[2])
    rows = []
    for w, kind, seconds in MEASURED:
        kernels = pick(estimates[w.name], efficiency, MEASURED_PICKS.get((w.name, w.dtype)))
        picked = list(kernels.values()) if kind == "step" else [kernels[kind]]
        model = sum(e.seconds(efficiency) for e in picked)
        rows.append(dict(workload=w, kind=kind, measured=seconds, model=model, error=model / seconds - 1,
                         fitted=(w.name, kind) == CALIBRATION_FIT, kernels=picked))  # fmt: skip
    return efficiency, rows


# The issue's goals, each as (name, workload of today's kernels, the records' measurement it is divided by or into).
GOAL_WORKLOADS = {  # the benchmarks' eager steps: label sums, and on Hopper tiles loaded by descriptors (TMA)
    "pixel 32768 bf16": Workload("pixel 32768", 32768, 32768, 150, "bf16", "tf32", PIXEL_FLAGS, True, True),
    "pixel 16384 bf16": Workload("pixel 16384", 16384, 16384, 150, "bf16", "tf32", PIXEL_FLAGS, True, True),
    "SupCon 4096 bf16": Workload("SupCon 4096", 8192, 8192, 0, "bf16", "tf32", SUPCON_FLAGS, True, True),
    "pixel 16384 fp32": Workload("pixel 16384", 16384, 16384, 150, "fp32", "tf32x3", PIXEL_FLAGS, True, True),
}
# Measured on the H200 (records.jsonl): the tight floor and dense eager steps the goals compare with, and today's
# fused step (median wall time of the step: runs e1319d4f, 07a2079d, f476647a).
RECORDED = {
    ("pixel 32768 bf16", "tight-floor"): 1.952e-3, ("pixel 32768 bf16", "triton"): 12.63e-3,
    ("pixel 16384 bf16", "dense"): 16.02e-3, ("pixel 16384 bf16", "triton"): 6.095e-3,
    ("SupCon 4096 bf16", "dense"): 3.528e-3, ("SupCon 4096 bf16", "triton"): 3.521e-3,
    ("pixel 16384 fp32", "dense"): 20.43e-3, ("pixel 16384 fp32", "triton"): 49.39e-3,
}  # fmt: skip
GEMM_PEAK = 989e12  # bf16 dense, the H100/H200 datasheet (the records' measured GEMM peak: 745-798 TFLOP/s)


def goals(pool, efficiency: float) -> list[dict]:
    """The issue's five goals: today's measured ratio and the model's estimate for today's kernels (the three tile
    kernels on the path the launcher takes; the sums, finalize and epilogue kernels and the host are not in it)."""
    fused = {name: pick(estimate(w, None, pool), efficiency) for name, w in GOAL_WORKLOADS.items()}
    # the same step with the per-tile label compares (the launcher's small-step path), for what label sums remove
    compares = pick(estimate(dataclasses.replace(GOAL_WORKLOADS["pixel 32768 bf16"], label_sums=False), None, pool),
                    efficiency)  # fmt: skip

    # the same step with its tiles loaded by pointers (torch.compile's path, and GPUs before Hopper)
    pointers = pick(estimate(dataclasses.replace(GOAL_WORKLOADS["pixel 32768 bf16"], tma=False), None, pool),
                    efficiency)  # fmt: skip

    # the one-pass backward (the batch columns' kernel adding dAnchors by atomics) against the two kernels
    one_pass = pick(estimate(GOAL_WORKLOADS["pixel 32768 bf16"], None, pool, kinds=("bwd_one_pass",)),
                    efficiency)["bwd_one_pass"]  # fmt: skip

    def step(name):
        return sum(e.seconds(efficiency) for e in fused[name].values())

    fwd = fused["pixel 32768 bf16"]["fwd"].seconds(efficiency)
    flops = 2 * 32768 * 32768 * 128
    return [
        dict(goal="pixel 32768 bf16: fused / tight floor", today=RECORDED[("pixel 32768 bf16", "triton")]
             / RECORDED[("pixel 32768 bf16", "tight-floor")], estimate=step("pixel 32768 bf16")
             / RECORDED[("pixel 32768 bf16", "tight-floor")], target="<= 2.0x", unit="x"),
        dict(goal="pixel 16384 bf16: dense eager / fused", today=RECORDED[("pixel 16384 bf16", "dense")]
             / RECORDED[("pixel 16384 bf16", "triton")], estimate=RECORDED[("pixel 16384 bf16", "dense")]
             / step("pixel 16384 bf16"), target=">= 8x", unit="x"),
        dict(goal="SupCon 4096 bf16: dense eager / fused", today=RECORDED[("SupCon 4096 bf16", "dense")]
             / RECORDED[("SupCon 4096 bf16", "triton")], estimate=RECORDED[("SupCon 4096 bf16", "dense")]
             / step("SupCon 4096 bf16"), target=">= 4x", unit="x"),
        dict(goal="pixel 16384 fp32 (TF32 off): dense eager / fused", today=RECORDED[("pixel 16384 fp32", "dense")]
             / RECORDED[("pixel 16384 fp32", "triton")], estimate=RECORDED[("pixel 16384 fp32", "dense")]
             / step("pixel 16384 fp32"), target=">= 1.5x", unit="x"),
        dict(goal="forward kernel, pixel 32768 bf16: share of the GEMM peak", today=flops / 5.574e-3 / GEMM_PEAK,
             estimate=flops / fwd / GEMM_PEAK, target=">= 40%", unit="%"),
    ] + [dict(goal=f"  {name}: {e.kernel}", kernel=e, seconds=e.seconds(efficiency), bound=e.bound(efficiency))
         for name in fused for e in fused[name].values()] + [
        dict(goal=f"pixel 32768 bf16: {kind}", path=(fused["pixel 32768 bf16"][kind], compares[kind]),
             seconds=tuple(e.seconds(efficiency) for e in (fused["pixel 32768 bf16"][kind], compares[kind])))
        for kind in compares
    ] + [
        dict(goal=f"pixel 32768 bf16: {kind}", loads=(fused["pixel 32768 bf16"][kind], pointers[kind]),
             seconds=tuple(e.seconds(efficiency) for e in (fused["pixel 32768 bf16"][kind], pointers[kind])))
        for kind in pointers
    ] + [dict(goal="pixel 32768 bf16", one_pass=one_pass, seconds=one_pass.seconds(efficiency),
              two_seconds=sum(fused["pixel 32768 bf16"][k].seconds(efficiency) for k in ("bwd_rows", "bwd_cols")))
    ]  # fmt: skip


def tile_label(config: tuple, stages: bool = False) -> str:
    """A configuration (BLOCK_M, BLOCK_N, warps, stages) as the records write it: 64x128 w8 (with stages: s3)."""
    return "x".join(map(str, config[:2])) + f" w{config[2]}" + (f" s{config[3]}" if stages else "")


def _fmt(value: float, unit: str) -> str:
    return f"{value:.0%}" if unit == "%" else f"{value:.2f}x"


def model_report(jobs: int = 2) -> list[str]:
    """The record's lines: the calibration against the H200 records, then the goal estimates."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import triton

    # one pool per source tree: a worker keeps the gpaco_kernels it imported first
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, jobs), mp_context=context) as pool:
        efficiency, rows = calibrate(pool)
    with ProcessPoolExecutor(max(1, jobs), mp_context=context) as pool:
        goal_rows = goals(pool, efficiency)
    lines = [
        "ESTIMATES, not measurements: an instruction-level model of the Triton kernels on an H200 SXM "
        "(python -m tools.gpu_model; tools/gpu_model.py says how)",
        f"SASS compiled here for sm_90 by triton {triton.__version__} (the H200 runs used triton 3.6.0); "
        f"issue efficiency {efficiency:.3f} fitted on {' '.join(CALIBRATION_FIT)} alone",
    ]
    worst = max(abs(r["error"]) for r in rows if not r["fitted"])
    for r in rows:
        w = r["workload"]
        status = "fitted" if r["fitted"] else f"{r['error']:+.0%}"
        picks = ", ".join(f"{e.kernel} {tile_label(e.config)}" for e in r["kernels"])
        lines.append(
            f"calibration | {w.name} {w.dtype} | {r['kind']} | measured {r['measured'] * 1e3:.2f} ms | "
            f"model {r['model'] * 1e3:.2f} ms | {status} | {picks}"
        )
    verdict = "within" if worst <= TOLERANCE else "NOT within"
    by_kind = []
    for label, fma in (("tensor-core products", False), ("FMA products (float32, TF32 off)", True)):
        errors = [abs(r["error"]) for r in rows if not r["fitted"]
                  and any(e.mix.kind == "fma" for e in r["kernels"]) == fma]  # fmt: skip
        if errors:
            inside = "within" if max(errors) <= TOLERANCE else "NOT within"
            by_kind.append(f"{label} {max(errors):.0%}, {inside}")
    lines.append(f"calibration: largest error of the checked points {worst:.0%}, {verdict} {TOLERANCE:.0%} "
                 f"({'; '.join(by_kind)})")  # fmt: skip
    compared = {"path": ("label sums", "per-tile compares"), "loads": ("descriptors (TMA)", "pointers")}
    for g in goal_rows:
        if kind := next((k for k in compared if k in g), None):  # one kernel two ways: a line of two estimates
            (a, b), (t_a, t_b), (name_a, name_b) = g[kind], g["seconds"], compared[kind]
            lines.append(
                f"{kind} | {g['goal']} | {name_a} {tile_label(a.config)}: "
                f"{a.mix.total} instructions per warp and iteration, {t_a * 1e3:.3f} ms | {name_b} "
                f"{tile_label(b.config)}: {b.mix.total} instructions, {t_b * 1e3:.3f} ms"
            )
        elif "one_pass" in g:
            e = g["one_pass"]
            choice = "two kernels" if g["two_seconds"] <= g["seconds"] else "one pass"
            lines.append(
                f"backward | {g['goal']} | two kernels (rows + columns): {g['two_seconds'] * 1e3:.3f} ms | one pass "
                f"{tile_label(e.config)}: {e.mix.total} instructions per warp and "
                f"iteration, {g['seconds'] * 1e3:.3f} ms, {e.bound(efficiency)}-bound (its atomics counted as issued "
                f"instructions; the L2's atomic throughput is not modelled, so a lower bound) | the model's choice: "
                f"{choice}"
            )
        elif "kernel" in g:
            e = g["kernel"]
            lines.append(f"kernel | {g['goal'].strip()} | {tile_label(e.config)} | "
                         f"{e.mix.total} instructions per warp and iteration | {g['seconds'] * 1e3:.3f} ms | "
                         f"{g['bound']}-bound")  # fmt: skip
        else:
            lines.append(f"goal | {g['goal']} | today {_fmt(g['today'], g['unit'])} (measured) | "
                         f"estimate {_fmt(g['estimate'], g['unit'])} | goal {g['target']}")  # fmt: skip
    return lines


def report_main(description: str, report, argv=None) -> int:
    """The command line of a report of lines (this model's, tools.tile_sweep's): --jobs compile processes, print the
    lines, and with --out also write them to the committed record."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    parser.add_argument("--out", help="also write the lines to this file (the record docs/benchmarks.md quotes)")
    args = parser.parse_args(argv)
    lines = report(args.jobs)
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


def main(argv=None) -> int:
    return report_main(__doc__.splitlines()[0], model_report, argv)


if __name__ == "__main__":
    sys.exit(main())
