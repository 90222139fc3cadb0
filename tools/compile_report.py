"""Compile every Triton kernel ahead of time for A100 (sm_80) and H100 (sm_90) and report its resources.

    python -m tools.compile_report [--arch 80 90] [--dims 16 32 64 128] [--jobs 2] [--only fwd]
                                                 [--out benchmarks/results/compile_report.txt]

No GPU is needed: triton lowers each kernel to PTX and a cubin for the target, and the cuobjdump shipped with
triton reads registers and local memory (STACK, i.e. spills) from the cubin; shared memory comes from the compile
metadata. One line per kernel x variant x precision x autotune candidate x BLOCK_D x arch, with the MMA kind the
dots became (wgmma, mma.sync or fma) and the SASS counts of tensor-core instructions, MUFU.EX2, compares and
selects. Exits 1 when a kernel fails to compile, spills inside a loop, spills more than COLD_SPILL_LIMIT bytes
outside loops, needs more shared memory than the arch has, or is a half-precision sm_90 configuration with a product
that did not lower to wgmma. A few bytes spilled outside every loop (values computed before the
column loop and read after it, which ptxas parks in local memory: one store and one load per program) are shown as
"cold spill", not failed: they cost a handful of instructions per program against the thousands of the loop.

What is compiled is everything the launchers in gpaco_kernels/triton/launch.py can launch: each kernel with every
configuration autotune may pick for that input dtype (gpaco_kernels/triton/configs.py, CANDIDATES), the constexpr
flags of the workloads users run (VARIANTS), every BLOCK_D for the variant with the most live tiles, and D = 128 for
the others; pointers and strides carry the 16-byte divisibility the JIT would specialize on for contiguous tensors
with D a multiple of 16.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

# Per-block shared memory limits (bytes) and the register file limit per thread.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
MAX_REGISTERS = 255
# Bytes per thread spilled outside every loop that still pass. 48: the half-precision row backward with class logits
# and normalization at 64 x 64 tiles on sm_80 parks 40 B (18 local loads/stores per program, none in a loop).
COLD_SPILL_LIMIT = 48

PRECISIONS = {  # name -> (input dtype, tl.dot input_precision for float32 operands)
    "fp32-tf32x3": ("fp32", "tf32x3"),  # float32 with TF32 disallowed (launch._precision)
    "fp32-tf32": ("fp32", "tf32"),
    "bf16": ("bf16", "tf32"),
    "fp16": ("fp16", "tf32"),
}

_ROW_FLAGS = ("HAS_CLASSES", "FROM_LOGITS", "HAS_BIAS", "EXCLUDE", "HAS_BATCH", "HAS_QUEUE", "NORMALIZE", "LABEL_SUMS")
MEAN, NONE = 2, 0  # the kernels' REDUCTION constexpr (launch.REDUCTIONS)


def _flags(*on: str, **more) -> dict:
    return dict({name: name in on for name in _ROW_FLAGS}, **dict(dict(BATCH_BY_COLUMNS=False), **more))


def _columns(**on) -> dict:
    """The column kernel's flags: these set, the others off."""
    flags = dict(HAS_BIAS=False, EXCLUDE=False, NORMALIZE=False, FINISH=False, LABEL_SUMS=False, ANCHOR_GRAD=False)
    return dict(flags, **on)


def _epilogue(**on) -> dict:
    flags = dict(HAS_COLS=False, NORMALIZE=False, LABEL_SUMS=False, HAS_CLASSES=False, HAS_BATCH=False)
    return dict(flags, REDUCTION=MEAN, **on)


# The constexpr flag sets the losses launch. The first variant of each kernel has the most live tiles (it is
# compiled at every BLOCK_D); the others at D = 128 only.
VARIANTS = {
    "fwd": {
        "paco-centers": _flags("HAS_CLASSES", "HAS_BIAS", "HAS_BATCH", "HAS_QUEUE", "NORMALIZE"),
        "gpaco-logits": _flags("HAS_CLASSES", "FROM_LOGITS", "HAS_BIAS", "HAS_BATCH", "HAS_QUEUE", "NORMALIZE"),
        "pixel": _flags("HAS_CLASSES", "HAS_BATCH", "NORMALIZE"),
        "psc": _flags("HAS_CLASSES", "EXCLUDE"),
        "supcon": _flags("HAS_BATCH"),
    },
    "bwd_rows": {
        "paco-centers": _flags(
            "HAS_CLASSES", "HAS_BIAS", "HAS_BATCH", "HAS_QUEUE", "NORMALIZE", NEED_LOGITS=False, REDUCTION=MEAN
        ),
        "gpaco-logits": _flags(
            "HAS_CLASSES",
            "FROM_LOGITS",
            "HAS_BIAS",
            "HAS_BATCH",
            "HAS_QUEUE",
            "NORMALIZE",
            NEED_LOGITS=True,
            REDUCTION=MEAN,
        ),
        "pixel": _flags("HAS_CLASSES", "HAS_BATCH", "NORMALIZE", NEED_LOGITS=False, REDUCTION=MEAN),
        "psc": _flags("HAS_CLASSES", "EXCLUDE", NEED_LOGITS=False, REDUCTION=NONE),
        "supcon": _flags("HAS_BATCH", NEED_LOGITS=False, REDUCTION=MEAN),
    },
    "bwd_cols": {
        "centers-bias": _columns(SEGMENT=0, HAS_BIAS=True, NORMALIZE=True, REDUCTION=MEAN, FINISH=True),
        "batch": _columns(SEGMENT=1, NORMALIZE=True, REDUCTION=MEAN),
        "psc-centers": _columns(SEGMENT=0, EXCLUDE=True, REDUCTION=NONE, FINISH=True),
        "batch-sums": _columns(SEGMENT=1, NORMALIZE=True, REDUCTION=MEAN, LABEL_SUMS=True),
    },
    # the column kernel adding the batch columns' part of dAnchors (float32 atomics): 'mean' and 'sum' only
    "bwd_one_pass": {
        "batch-sums": _columns(SEGMENT=1, NORMALIZE=True, REDUCTION=MEAN, LABEL_SUMS=True, ANCHOR_GRAD=True),
        "plain-sum": _columns(SEGMENT=1, REDUCTION=1, LABEL_SUMS=True, ANCHOR_GRAD=True),
    },
    "label_sums": {
        "forward": dict(CLASSES=True, HAS_BATCH=True, NORMALIZE=True, COEFFICIENTS=False, REDUCTION=MEAN),
        "backward": dict(CLASSES=False, HAS_BATCH=True, NORMALIZE=False, COEFFICIENTS=True, REDUCTION=NONE),
    },
    "finalize": {"mean": dict(REDUCTION=MEAN), "none": dict(REDUCTION=NONE)},
    "epilogue": {
        "label-sums": _epilogue(HAS_COLS=True, NORMALIZE=True, LABEL_SUMS=True, HAS_CLASSES=True, HAS_BATCH=True),
        "normalize": _epilogue(HAS_COLS=True, NORMALIZE=True, HAS_BATCH=True),
        "plain": _epilogue(),
    },
}

# The row kernels' variants on the launchers' path for large steps, positives by label sums: the same flags.
for _kind in ("fwd", "bwd_rows"):
    for _name in ("gpaco-logits", "pixel", "supcon"):
        VARIANTS[_kind][f"{_name}-sums"] = dict(VARIANTS[_kind][_name], LABEL_SUMS=True)
# the row backward of the one-pass backward: the batch columns left to the column kernel
VARIANTS["bwd_rows"]["gpaco-logits-one-pass"] = dict(VARIANTS["bwd_rows"]["gpaco-logits-sums"], BATCH_BY_COLUMNS=True)
# The label-sums sweeps with their tiles loaded by tensor descriptors (launch.tma_rows): Hopper only (`cases`).
for _kind, _names in (("fwd", ("gpaco-logits-sums", "pixel-sums", "supcon-sums")),
                      ("bwd_rows", ("gpaco-logits-sums", "pixel-sums", "supcon-sums")),
                      ("bwd_cols", ("batch-sums",)), ("bwd_one_pass", ("batch-sums", "plain-sum"))):  # fmt: skip
    for _name in _names:
        VARIANTS[_kind][f"{_name}-tma"] = dict(VARIANTS[_kind][_name], TMA=True)

# The wide-feature kernels (paco_wide, D > 128): their code is the same for every D past 128 (a loop bound, not a
# block size), so each is compiled once, shown as D1024 (WIDE_D), with its class's chunks (launch.WIDE_CHUNKS).
_WIDE_FLAGS = ("HAS_CLASSES", "FROM_LOGITS", "HAS_BIAS", "EXCLUDE", "HAS_BATCH", "HAS_QUEUE")
WIDE_D = 1024


def _wide(*on: str, **more) -> dict:
    return dict({name: name in on for name in _WIDE_FLAGS}, **more)


VARIANTS["wide_fwd"] = {
    "paco-centers": _wide("HAS_CLASSES", "HAS_BIAS", "HAS_BATCH", "HAS_QUEUE"),
    "gpaco-logits": _wide("HAS_CLASSES", "FROM_LOGITS", "HAS_BIAS", "HAS_BATCH", "HAS_QUEUE"),
}
VARIANTS["wide_bwd_rows"] = {
    "paco-centers": _wide("HAS_CLASSES", "HAS_BIAS", "HAS_BATCH", "HAS_QUEUE", NEED_LOGITS=False, REDUCTION=MEAN),
    "gpaco-logits": _wide(
        "HAS_CLASSES", "FROM_LOGITS", "HAS_BIAS", "HAS_BATCH", "HAS_QUEUE", NEED_LOGITS=True, REDUCTION=MEAN
    ),
}
VARIANTS["wide_bwd_cols"] = {
    "centers-bias": dict(SEGMENT=0, HAS_BIAS=True, EXCLUDE=False, REDUCTION=MEAN),
    "batch": dict(SEGMENT=1, HAS_BIAS=False, EXCLUDE=False, REDUCTION=MEAN),
    "psc-centers": dict(SEGMENT=0, HAS_BIAS=False, EXCLUDE=True, REDUCTION=NONE),
}

# Pointer arguments that are not of the input dtype.
_INDEX_POINTERS = {"label_ptr", "queue_label_ptr", "group_ptr", "order_ptr", "sorted_label_ptr", "bounds_ptr"}
_INT32_POINTERS = {"ok_ptr", "flag_ptr", "sums_flag_ptr"}
_FLOAT32_POINTERS = {
    "part_ptr", "parts_ptr", "batch_grad_ptr", "bias_ptr", "lse_ptr", "pos_ptr", "counted_ptr", "grad_anchor_ptr",
    "sums_ptr", "counts_ptr", "coef_sums_ptr",
}  # fmt: skip
_FLOAT_SCALARS = {"t_scale", "c_scale", "scale", "alpha", "beta_on", "beta_off", "gamma", "loss_scale", "lse_eps"}


@dataclass(frozen=True)
class Case:
    kind: str  # fwd | bwd_rows | bwd_cols | bwd_one_pass | a fixed kernel
    variant: str
    precision: str
    block_d: int
    arch: int
    config: tuple = ()  # (BLOCK_M, BLOCK_N, num_warps, num_stages), one of the autotune candidates


@dataclass
class Result:
    case: Case
    config: str = ""
    registers: int = -1
    stack: int = -1
    hot_spills: int = -1  # local loads/stores inside loops
    cold_spills: int = -1  # outside every loop
    shared: int = -1
    seconds: float = 0.0
    error: str = ""
    sass: dict = None  # instruction counts of the kernel's SASS (sass_counts)

    def lacks_wgmma(self) -> bool:
        """A half-precision sm_90 configuration with a dot that did not lower to wgmma (Hopper's tensor-core
        instruction; mma.sync runs there at a fraction of its rate): a failure."""
        c = self.case
        half = PRECISIONS[c.precision][0] in ("bf16", "fp16")
        needs = c.arch == 90 and half and c.kind in ("fwd", "bwd_rows", "bwd_cols", "bwd_one_pass")
        return needs and self.sass is not None and self.sass["mma"] != "wgmma"

    def problems(self) -> list[str]:
        if self.error:
            return [f"compile failed: {self.error}"]
        found = []
        if self.hot_spills > 0 or self.stack > COLD_SPILL_LIMIT:
            found.append(
                f"spills ({self.stack} B of local memory per thread; {self.hot_spills} spill loads/stores in loops, "
                f"{self.cold_spills} outside)"
            )
        if self.lacks_wgmma():
            found.append(f"a half-precision sm_90 product lowered to {self.sass['mma']}, not wgmma alone")
        if self.registers > MAX_REGISTERS:
            found.append(f"{self.registers} registers > {MAX_REGISTERS}")
        if self.shared > SHARED_LIMIT[self.case.arch]:
            found.append(f"shared memory {self.shared} B > {SHARED_LIMIT[self.case.arch]} B on sm_{self.case.arch}")
        return found


def cases(archs, dims, only=None, first=False, precisions=None) -> list[Case]:
    """The cases to compile: `only` these kernels, each variant's `first` autotune candidate alone or all of them, in
    these `precisions` (PRECISIONS' names; all when None)."""
    from gpaco_kernels.triton.configs import FIXED, candidates
    from gpaco_kernels.triton.launch import TMA_CHECKED_TRITON, _device_descriptors_supported, _triton_version

    # the -tma variants where the launcher takes descriptors by default (launch.TMA "auto")
    descriptors = _device_descriptors_supported() and _triton_version() >= TMA_CHECKED_TRITON
    out = []
    for kind, variants in VARIANTS.items():
        if only and kind not in only:
            continue
        for i, variant in enumerate(variants):
            for precision in precisions or PRECISIONS:
                klass = precision_class_of(precision)
                # a fixed kernel: its one configuration (tile, num_warps, 1 stage); finalize has no BLOCK_D
                sums = bool(variants[variant].get("LABEL_SUMS", False))
                has_d = "BLOCK_D" in {name for name, _ in kernel_arguments(kernel(kind))}
                for arch in archs:
                    if variants[variant].get("TMA") and (arch < 90 or not descriptors):
                        continue  # the launcher takes TMA from sm_90 on, where this Triton makes descriptors
                    tma = bool(variants[variant].get("TMA", False))
                    configs = candidates(kind, klass, sums, arch, tma) if kind not in FIXED else [FIXED_CONFIG]
                    configs = configs[:1] if first else configs
                    wide = kind.startswith("wide_")
                    for config in configs:
                        for block_d in [WIDE_D] if wide else (dims if i == 0 and has_d else [max(dims)]):
                            out.append(Case(kind, variant, precision, block_d, arch, config))
    return out


def precision_class_of(precision: str) -> str:
    """The autotune candidates' class (configs.precision_class) of a report precision name."""
    dtype, input_precision = PRECISIONS[precision]
    if dtype != "fp32":
        return "half"
    return "fp32x3" if input_precision == "tf32x3" else "fp32"


FIXED_CONFIG = ("fixed",)  # Case.config of a kernel launched with configs.FIXED's one configuration


def launch_constexprs(case: Case) -> tuple[dict, dict, str]:
    """(constexprs, compile options, label) of one case: the variant's flags, the tiles of its configuration, and
    UPCAST/PRECISION where the kernel takes them."""
    from gpaco_kernels.triton.configs import FIXED

    names = {name for name, is_constexpr in kernel_arguments(kernel(case.kind)) if is_constexpr}
    if case.kind in FIXED:
        tiles, num_warps = FIXED[case.kind]
        num_stages, label = 1, " ".join(f"{k}{v}" for k, v in tiles.items()) + f" w{num_warps}"
        tiles = dict(tiles, BLOCK_D=case.block_d)
    else:
        block_m, block_n, num_warps, num_stages = case.config
        tiles = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=case.block_d)
        if case.kind.startswith("wide_"):  # the feature chunks of the class, whatever D is
            from gpaco_kernels.triton.launch import WIDE_CHUNKS

            block_k, block_d = WIDE_CHUNKS[precision_class_of(case.precision)]
            tiles = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d)
        label = f"{block_m}x{block_n} w{num_warps} s{num_stages}"
    extra = dict(UPCAST=False, PRECISION=PRECISIONS[case.precision][1], TMA=False)
    constexprs = {k: v for k, v in {**extra, **VARIANTS[case.kind][case.variant], **tiles}.items() if k in names}
    return constexprs, dict(num_warps=num_warps, num_stages=num_stages), label


def kernel_arguments(fn) -> list[tuple[str, bool]]:
    """(name, is constexpr) of each argument of a @triton.jit kernel, read from the Python function's annotations
    (so it works on the interpreter's wrapper too)."""
    import inspect

    import triton.language as tl

    params = inspect.signature(getattr(fn, "fn", fn)).parameters.values()
    return [(p.name, p.annotation is tl.constexpr or str(p.annotation).endswith("constexpr")) for p in params]


def _signature(fn, dtype: str, constexprs: dict, float_type: str = "fp32") -> tuple[dict, dict]:
    """Triton signature and divisibility attributes for the kernel's arguments, as the JIT would derive them.
    float_type: how float arguments are typed (fp32 by Triton's launcher, fp64 by torch.compile's)."""
    signature, attrs = {}, {}
    for index, (name, is_constexpr) in enumerate(kernel_arguments(fn)):
        if is_constexpr:
            if name not in constexprs:
                raise KeyError(f"no value for the constexpr argument {name} of {fn.__name__}")
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            if name in _INDEX_POINTERS:
                signature[name] = "*i64"
            elif name in _INT32_POINTERS:
                signature[name] = "*i32"
            elif name in _FLOAT32_POINTERS:
                signature[name] = "*fp32"
            elif name == "grad_cols_ptr":  # the column kernel's output: finished in the input dtype, or float32
                signature[name] = f"*{dtype}" if constexprs.get("FINISH", True) else "*fp32"
            else:
                signature[name] = f"*{dtype}"
            attrs[(index,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif name in _FLOAT_SCALARS:
            signature[name] = float_type
        elif name.endswith("_bucket"):  # autotune key only: powers of two
            signature[name] = "i32"
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if name.startswith("stride") or name == "D":
                attrs[(index,)] = [["tt.divisibility", 16]]  # contiguous rows of D, D a multiple of 16
    return signature, attrs


def ast_source(fn, signature: dict, constexprs: dict, attrs: dict):
    """triton.compiler.ASTSource of a kernel for this Triton: from 3.3 on it takes the constexprs by name beside a
    signature that lists them, and the attributes as a dict; 3.0-3.2 take the constants apart from a signature of the
    other arguments, and the attributes as an AttrsDescriptor (its divisibility hints by argument index)."""
    import inspect

    from triton.compiler import ASTSource

    if "constexprs" in inspect.signature(ASTSource).parameters:
        return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    from triton.backends.compiler import AttrsDescriptor

    hints = {index: 16 for (index,), properties in attrs.items() if ["tt.divisibility", 16] in properties}
    runtime = {name: kind for name, kind in signature.items() if kind != "constexpr"}
    return ASTSource(fn=fn, signature=runtime, constants=constexprs, attrs=AttrsDescriptor.from_hints(hints))


def _cuobjdump(cubin: bytes, *args: str) -> str:
    """Output of the cuobjdump shipped with triton on a cubin (resource usage: ms; SASS: about a second)."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, *args, f.name], capture_output=True, text=True, check=True).stdout


def _resource_usage(text: str) -> tuple[int, int]:
    """(registers, stack bytes per thread) from cuobjdump's resource usage line."""
    registers = re.search(r"REG:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    if registers is None or stack is None:
        raise RuntimeError(f"cannot read the resource usage from cuobjdump output: {text!r}")
    return int(registers.group(1)), int(stack.group(1))


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


def sass_instructions(sass: str) -> list[tuple[int, str, str]]:
    """(address, opcode, text) of each instruction of a kernel's SASS; the opcode without its predicate."""
    out = []
    for addr_hex, text in _SASS_LINE.findall(sass):
        words = text.split()
        op = words[1] if words and words[0].startswith("@") and len(words) > 1 else (words[0] if words else "")
        out.append((int(addr_hex, 16), op, text))
    return out


def sass_loops(instructions) -> list[tuple[int, int]]:
    """(first, last address) of each loop of sass_instructions: the range from a backward branch's target to the
    branch (a branch to itself is the trap after EXIT, not a loop). An unconditional branch back from code placed
    after the kernel's last EXIT is not a loop either: ptxas puts the retry of an mbarrier wait (a TMA load's
    completion) out of line there, and its jump back lands inside the loop that waited."""
    exits = [addr for addr, op, _ in instructions if op == "EXIT"]
    last_exit = max(exits, default=-1)
    loops = []
    for addr, _op, text in instructions:
        branch = re.match(r"(@!?U?P\w+\s+)?BRA\s+(?:\w+\s+)?0x([0-9a-f]+)", text)
        if not branch or int(branch.group(2), 16) >= addr:
            continue
        if branch.group(1) is None and addr > last_exit >= 0 and int(branch.group(2), 16) < last_exit:
            continue  # the way back from an out-of-line block
        loops.append((int(branch.group(2), 16), addr))
    return loops


def spill_instructions(sass: str) -> tuple[int, int]:
    """(local loads/stores inside a loop, outside every loop) in a kernel's SASS (sass_loops): a spill in a loop
    costs on every iteration, one outside costs once."""
    instructions = sass_instructions(sass)
    loops = sass_loops(instructions)
    spills = [addr for addr, op, _ in instructions if op.startswith(("STL", "LDL"))]
    hot = sum(any(lo <= a <= hi for lo, hi in loops) for a in spills)
    return hot, len(spills) - hot


def sass_counts(sass: str) -> dict:
    """Instruction counts of a kernel's SASS that say what its tiles cost: the tensor-core instructions (HGMMA:
    Hopper's wgmma; HMMA: mma.sync), the exponentials (MUFU.EX2), compares (FSETP, ISETP) and selects (FSEL), and
    the MMA kind that follows (wgmma, mma.sync, or fma where a dot became CUDA-core FMAs)."""
    counts = {"HGMMA": 0, "HMMA": 0, "MUFU.EX2": 0, "SETP": 0, "FSEL": 0}
    for _, op, _ in sass_instructions(sass):
        if op.startswith("HGMMA"):
            counts["HGMMA"] += 1
        elif op.startswith("HMMA"):
            counts["HMMA"] += 1
        elif op == "MUFU.EX2":
            counts["MUFU.EX2"] += 1
        elif op.startswith(("FSETP", "ISETP")):
            counts["SETP"] += 1
        elif op.startswith("FSEL"):
            counts["FSEL"] += 1
    kinds = [name for name, key in (("wgmma", "HGMMA"), ("mma.sync", "HMMA")) if counts[key]]
    counts["mma"] = "+".join(kinds) or "fma"
    return counts


def kernel(kind: str):
    """The @triton.jit function of kernel `kind` (fwd, bwd_rows, bwd_cols, finalize, epilogue), unwrapped from its
    autotuner."""
    import importlib

    module = importlib.import_module(f"gpaco_kernels.triton.paco_{'wide' if kind.startswith('wide_') else kind}")
    fn = getattr(module, f"_paco_{kind}_kernel")  # bwd_one_pass: the column kernel's JIT function, autotuned apart
    return fn.fn if hasattr(fn, "configs") else fn  # an Autotuner wraps the JIT function; fixed kernels are one


def compile_case(case: Case) -> Result:
    """Compile one case (in a worker process, with the interpreter off) and measure it."""
    import triton
    from triton.backends.compiler import GPUTarget

    fn = kernel(case.kind)
    dtype = PRECISIONS[case.precision][0]
    constexprs, options, label = launch_constexprs(case)
    result = Result(case, config=label)
    start = time.perf_counter()
    try:
        signature, attrs = _signature(fn, dtype, constexprs)
        source = ast_source(fn, signature, constexprs, attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", case.arch, 32), options=options)
        cubin = compiled.asm["cubin"]
        result.registers, result.stack = _resource_usage(_cuobjdump(cubin, "--dump-resource-usage"))
        sass = _cuobjdump(cubin, "-sass")
        result.hot_spills, result.cold_spills = spill_instructions(sass)
        result.sass = sass_counts(sass)
        result.shared = compiled.metadata.shared
    except Exception as exc:  # reported as a failed line, not raised: the report covers every case
        result.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    result.seconds = time.perf_counter() - start
    return result


def compile_all(todo: list, jobs: int):
    """compile_case of each case, in order, in `jobs` worker processes (spawned: without the interpreter). A compiler
    that aborts (an assertion inside Triton's C++) kills its worker and breaks the pool, failing every case in flight:
    the first of those is compiled again alone (reported as failed if it aborts again), the rest in a new pool."""
    context = multiprocessing.get_context("spawn")
    pending = list(todo)
    while pending:
        with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context) as pool:
            futures = [pool.submit(compile_case, case) for case in pending]
            for index, (case, future) in enumerate(zip(pending, futures)):
                try:
                    yield future.result()
                except BrokenProcessPool:
                    yield _compile_alone(case, context)
                    pending = pending[index + 1 :]
                    break
            else:
                pending = []


def _compile_alone(case: Case, context) -> Result:
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(compile_case, case).result()
        except BrokenProcessPool:
            label = launch_constexprs(case)[2]
            return Result(case, config=label, error="the compiler process died (an abort inside Triton)")


def format_line(r: Result) -> str:
    c = r.case
    head = f"{c.kind:<9} {c.variant:<13} {c.precision:<10} D{c.block_d:<4} sm_{c.arch}  {r.config:<15}"
    if r.error:
        return f"{head} FAILED  {r.error}"
    status = "ok" if not r.problems() else "FAIL: " + "; ".join(r.problems())
    if status == "ok" and r.stack > 0:
        status = f"ok (cold spill: {r.cold_spills} local loads/stores outside loops)"
    mix = ""
    if r.sass:
        k = r.sass
        mix = (f"  mma {k['mma']:<8} HGMMA {k['HGMMA']:>3} HMMA {k['HMMA']:>3} EX2 {k['MUFU.EX2']:>3} "
               f"SETP {k['SETP']:>4} FSEL {k['FSEL']:>4}")  # fmt: skip
    return f"{head} regs {r.registers:>3}  spill {r.stack:>3} B  shared {r.shared / 1024:5.1f} KB{mix}  {status}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_LIMIT))
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64, 128], help="BLOCK_D values (powers of 2)")
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="restrict to these kernels")
    parser.add_argument("--first", action="store_true", help="each variant's first autotune candidate alone")
    parser.add_argument("--precisions", nargs="+", choices=sorted(PRECISIONS), help="restrict to these precisions")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    parser.add_argument("--out", help="also write the report to this file (the record docs/benchmarks.md quotes)")
    args = parser.parse_args(argv)
    bad_dims = [d for d in args.dims if d < 16 or d & (d - 1) or d > 1024]
    if bad_dims:
        parser.error(f"--dims must be powers of two in [16, 1024] (BLOCK_D); got {bad_dims}")

    # The kernels must be real JIT functions, not the interpreter's: compile in fresh processes without it.
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    todo = cases(args.arch, sorted(args.dims), args.only, args.first, args.precisions)
    targets = ", ".join(f"sm_{arch}" for arch in args.arch)
    lines = [f"compiling {len(todo)} kernel configurations for {targets} with {args.jobs} jobs ({_versions()})"]
    print(lines[0])
    start = time.perf_counter()
    results = []
    for result in compile_all(todo, args.jobs):
        lines.append(format_line(result))
        print(lines[-1], flush=True)
        results.append(result)
    failed = [r for r in results if r.problems()]
    cold = [r for r in results if not r.problems() and r.stack > 0]
    lines.append(
        f"{len(results)} compiled in {time.perf_counter() - start:.0f} s; "
        f"max registers {max((r.registers for r in results), default=0)}, "
        f"max shared {max((r.shared for r in results), default=0) / 1024:.1f} KB; "
        f"{len(cold)} with a cold spill of at most {max((r.stack for r in cold), default=0)} B; "
        f"{sum(r.lacks_wgmma() for r in results)} half-precision sm_90 without wgmma; {len(failed)} failing"
    )
    print(lines[-1])
    for r in failed:
        print("FAILING:", format_line(r), file=sys.stderr)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 1 if failed else 0


def _versions() -> str:
    import triton

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return f"triton {triton.__version__}" + (f", commit {commit}" if commit else "")


if __name__ == "__main__":
    sys.exit(main())
