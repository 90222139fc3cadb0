"""Launch configurations autotune may pick, per kernel and input precision, and the autotune setup.

Every configuration here is compiled for sm_80 and sm_90 at every BLOCK_D, for every flag variant, by
`python -m tools.compile_report` (CI runs it): none may spill or exceed shared memory. On a GPU,
autotune times the candidates of the input's precision class once per key (shape bucket of anchors and columns,
BLOCK_D, precision, dtypes) and keeps the fastest. Float32 dots (IEEE or TF32) take more registers than
half-precision ones, hence smaller tiles; with 8 warps ptxas caps float32 backward kernels at 80 or 128 registers
and spills, so they use 4.

Under the interpreter (TRITON_INTERPRET=1, tests on machines without a GPU) there is nothing to time: each kernel
gets the single INTERPRET configuration, which tests replace by smaller tiles.
"""

from __future__ import annotations

import os

import torch
import triton
from triton.runtime.autotuner import Autotuner

from .requirements import release

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_RELEASE = release(triton.__version__)  # (major, minor): the candidates depend on it (CLEAN_FROM)

# (kernel, precision class) -> candidates as (BLOCK_M, BLOCK_N, num_warps, num_stages). The first is the one the
# previous, hand-picked schedule used.
CANDIDATES = {
    # Half precision: every tile product has 64 rows (M) or more, so that it lowers to wgmma on sm_90 (a warpgroup's
    # wgmma takes 64 rows; smaller tiles fall back to mma.sync): the anchor tile in the forward and row backward, and
    # both tiles in the column backward (its second product, H^T A, has BLOCK_N rows). With 8 warps on a 64 x 64 tile
    # the two warpgroups split its columns, and the backward's second product needs whole rows of H: the compiler
    # recomputes the first product and H in each warpgroup (twice the HGMMA and exps of a tile, read from the SASS),
    # so 4-warp tiles are candidates where they fit. 128-row and 64 x 128 forward tiles spill; so do a 64 x 32
    # row backward with 4 warps (float16 with class logits and normalization: 88-200 B) and a 64 x 64 column
    # backward with 4 warps and per-tile label compares (it fits with label sums: LABEL_SUMS_CANDIDATES).
    ("fwd", "half"): [(64, 64, 8, 3), (64, 32, 4, 3)],
    ("bwd_rows", "half"): [(64, 64, 8, 2)],
    ("bwd_cols", "half"): [(64, 64, 8, 2)],
    ("fwd", "fp32"): [(32, 32, 4, 2), (16, 32, 4, 2)],
    ("bwd_rows", "fp32"): [(16, 16, 4, 1), (32, 16, 4, 1)],
    ("bwd_cols", "fp32"): [(16, 32, 4, 1), (32, 32, 4, 1)],
    # float32 with TF32 disallowed, 3xTF32 products: each operand is held twice (TF32 part and remainder), so the
    # forward's 32-row tiles spill at D = 128; 16 rows.
    ("fwd", "fp32x3"): [(16, 32, 4, 2)],
    ("bwd_rows", "fp32x3"): [(16, 16, 4, 1)],
    ("bwd_cols", "fp32x3"): [(16, 32, 4, 1)],
    # The one-pass backward (paco_bwd_one_pass: the column kernel adding dAnchors too, label sums only): a second
    # accumulator, BLOCK_M x D, live beside the column tile's. 64 x 128 tiles fit with 8 warps but are slower by the
    # model (tools/gpu_model.py); 64 x 64 with 4 warps spills on sm_80 (HOPPER_ONLY).
    ("bwd_one_pass", "half"): [(64, 64, 4, 2), (64, 64, 8, 2)],
    ("bwd_one_pass", "fp32"): [(16, 32, 4, 1), (32, 32, 4, 1)],
    ("bwd_one_pass", "fp32x3"): [(16, 32, 4, 1)],
    # The wide-feature kernels (paco_wide, D > 128): the products loop over the features, the backward programs own
    # a block of them (launch.WIDE_CHUNKS), so the tiles are the narrow features' with nothing held across D.
    ("wide_fwd", "half"): [(64, 64, 8, 3)],  # 4 warps: 24-32 B spilled into the loop on sm_80
    ("wide_fwd", "fp32"): [(32, 32, 4, 2)],
    ("wide_fwd", "fp32x3"): [(16, 32, 4, 2)],
    ("wide_bwd_rows", "half"): [(64, 64, 8, 2)],
    ("wide_bwd_rows", "fp32"): [(32, 32, 4, 1)],
    ("wide_bwd_rows", "fp32x3"): [(16, 32, 4, 1)],
    ("wide_bwd_cols", "half"): [(64, 64, 8, 2)],
    ("wide_bwd_cols", "fp32"): [(32, 32, 4, 1)],
    ("wide_bwd_cols", "fp32x3"): [(16, 32, 4, 1)],
}
# The candidates of the label-sums path (LABEL_SUMS) where they differ: its tiles carry no labels, so 4-warp 64 x 64
# ones fit (the row backward's class block with given logits runs in narrower tiles for that, paco_bwd_rows), and so
# does an 8-warp 64 x 128 forward (two warpgroups, 64 columns each). `python -m tools.tile_sweep` compiles and
# estimates larger tiles: the 128-row ones spill with 4 warps and with 8 are estimated slower (one program per SM).
LABEL_SUMS_CANDIDATES = {
    ("bwd_cols", "half"): [(64, 64, 4, 2), (64, 64, 8, 2)],
    ("bwd_rows", "half"): [(64, 64, 4, 2), (64, 64, 8, 2)],
    ("fwd", "half"): [(64, 64, 4, 3), (64, 64, 8, 3), (64, 32, 4, 3), (64, 128, 8, 3)],
}
# Candidates for Hopper (sm_90) alone: 4-warp 64-row backward tiles, whose one warpgroup takes each 64-row wgmma
# whole where 8 warps recompute the first product in both warpgroups. On sm_80 they lower to mma.sync and park
# 72-96 B outside their loops (the compile report), and the 8-warp tile serves there.
HOPPER_ONLY = {("bwd_rows", "half"): {(64, 64, 4, 2)}, ("bwd_one_pass", "half"): {(64, 64, 4, 2)}}
# Candidates kept from the label-sums sweeps whose tiles load by tensor descriptors (launch.tma_rows): the 4-warp
# 64 x 64 forward, at 255 registers by pointers, spills 72 B into its loop with the descriptors' state (pixel
# variant, sm_90; the compile report); so does the 4-warp 64 x 64 one pass (16-32 B, sm_90; it was at 255 registers
# with a cold spill already, and the cap on its padded columns' exponent tipped it).
POINTERS_ONLY = {("fwd", "half"): {(64, 64, 4, 3)}, ("bwd_one_pass", "half"): {(64, 64, 4, 2)}}
# Candidates by Triton release. The lists above are the newest releases'; older compilers spill some of them in a loop
# (each release's compile report, every candidate at D 128: `python -m tools.triton_matrix --every-candidate`).
# CLEAN_FROM: (kernel, precision class, on the label-sums path) -> {candidate: the first release that compiles it
# clean on sm_80 and sm_90}; candidates() leaves it out before. STAND_INS: the candidates that take their place there,
# {candidate: the first release that no longer needs it} (clean on the releases before it).
_BOTH_PATHS = (False, True)
CLEAN_FROM = {
    # 3.3, 3.4: 8-32 B in the loop (pixel, sm_90); clean on 3.7
    ("fwd", "half", False): {(64, 64, 8, 3): (3, 7)},
    # 64 x 64 w4: 96 B on 3.3, 24-144 B on 3.4-3.8 (sm_80); 64 x 128 w8: 16-192 B on 3.3-3.7
    ("fwd", "half", True): {(64, 64, 4, 3): (3, 9), (64, 128, 8, 3): (3, 9)},
    ("bwd_cols", "half", False): {(64, 64, 8, 2): (3, 7)},  # 3.3, 3.4: 360-368 B (PSC with centers, sm_80)
    **{("bwd_cols", "fp32x3", sums): {(16, 32, 4, 1): (3, 4)} for sums in _BOTH_PATHS},  # 3.3: 120-232 B
    # 64 x 64 w4 (Hopper): 152-440 B on 3.3, 3.4 and 3.7; w8 s2: 56 B on 3.3
    **{("bwd_one_pass", "half", sums): {(64, 64, 4, 2): (3, 9), (64, 64, 8, 2): (3, 4)} for sums in _BOTH_PATHS},
    **{("bwd_one_pass", "fp32", sums): {(32, 32, 4, 1): (3, 9)} for sums in _BOTH_PATHS},  # 56-64 B on 3.3, 3.7
}
STAND_INS = {
    ("bwd_cols", "half", False): {(64, 64, 8, 1): (3, 7)},  # one stage: 250 registers, no spill (3.3, sm_80)
    **{("bwd_cols", "fp32x3", sums): {(16, 16, 8, 1): (3, 4)} for sums in _BOTH_PATHS},  # (16 x 32 w8: 32 B, sm_90)
    **{("bwd_one_pass", "half", sums): {(64, 64, 8, 1): (3, 4)} for sums in _BOTH_PATHS},
}
PRECISION_CLASSES = ("half", "fp32", "fp32x3")
KERNELS = ("fwd", "bwd_rows", "bwd_cols", "bwd_one_pass", "wide_fwd", "wide_bwd_rows", "wide_bwd_cols")  # autotuned
# Kernels launched with one configuration (nothing worth tuning: they read O(A) or O(rows x D) floats, once):
# kind -> (tile constexprs, num_warps). finalize: one program over the anchors, BLOCK at a time; epilogue:
# BLOCK_R rows of dFeatures per program; label_sums: one group per program, BLOCK_R of its rows at a time.
FIXED = {
    "finalize": ({"BLOCK": 1024}, 4),
    "epilogue": ({"BLOCK_R": 32}, 4),
    # 8 warps before Triton 3.4: with 4, 3.3 parks 8 B of the float32 forward in local memory inside its loop (sm_90)
    "label_sums": ({"BLOCK_R": 64, "CHECK_BLOCK": 1024}, 4 if TRITON_RELEASE >= (3, 4) else 8),
}
INTERPRET_CONFIG = (32, 32, 4, 1)
SPLIT_UNIT = 64  # a column split is a multiple of this, and so of every BLOCK_N above
AUTOTUNE_KEY = ["rows_bucket", "cols_bucket", "BLOCK_D", "PRECISION", "LABEL_SUMS", "TMA"]
# Flags that change a kernel's work enough to tune apart: the row backward without the batch columns (one-pass)
# one, and the wide kernels' feature dim (their loop over it is not in a block size)
EXTRA_KEY = {"bwd_rows": ["BATCH_BY_COLUMNS"], "wide_fwd": ["D"], "wide_bwd_rows": ["D"], "wide_bwd_cols": ["D"]}


def precision_class(dtype: torch.dtype, input_precision: str = "tf32") -> str:
    """The candidates' class of an input dtype and tl.dot input_precision (launch._precision)."""
    if dtype != torch.float32:
        return "half"
    return "fp32x3" if input_precision == "tf32x3" else "fp32"


def candidates(
    kind: str, precision: str, label_sums: bool = False, arch: int = 90, tma: bool = False,
    triton_release: tuple[int, int] = TRITON_RELEASE,
) -> list[tuple]:  # fmt: skip
    """The autotune candidates of a kernel for a precision class, on the label-sums path or not, for a GPU of
    compute capability `arch` (major x 10 + minor), with tiles loaded by tensor descriptors (tma) or not, with this
    Triton release (major, minor)."""
    if label_sums and (kind, precision) in LABEL_SUMS_CANDIDATES:
        found = LABEL_SUMS_CANDIDATES[(kind, precision)]
    else:
        found = CANDIDATES[(kind, precision)]
    if arch < 90:
        found = [c for c in found if c not in HOPPER_ONLY.get((kind, precision), ())]
    if tma:
        found = [c for c in found if c not in POINTERS_ONLY.get((kind, precision), ())]
    key = (kind, precision, bool(label_sums))
    found = [c for c in found if triton_release >= CLEAN_FROM.get(key, {}).get(c, (0, 0))]
    return found + [c for c, until in STAND_INS.get(key, {}).items() if triton_release < until and c not in found]


def arch_of(device: torch.device) -> int:
    """Compute capability (major x 10 + minor) of a CUDA device."""
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _config(block_m, block_n, num_warps, num_stages) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=num_warps, num_stages=num_stages)


def _full_autotune_configs(kind: str) -> tuple[list[triton.Config], dict]:
    """Every candidate of one kernel as a triton.Config (every precision class, path and GPU generation, each
    configuration once: Configs compare by value), and the (precision class, label sums, Hopper, TMA) tuples of
    each."""
    configs, classes = [], {}
    for precision in PRECISION_CLASSES:
        for label_sums in (False, True):
            for hopper in (False, True):
                for tma in (False, True):
                    for entry in candidates(kind, precision, label_sums, 90 if hopper else 80, tma):
                        config = _config(*entry)
                        if config not in classes:
                            configs.append(config)
                        classes.setdefault(config, set()).add((precision, label_sums, hopper, tma))
    return configs, classes


def pruner(classes: dict, interpret: bool = INTERPRET):
    """early_config_prune: keep the candidates of the input's precision class (the dtype of feat_ptr and the
    PRECISION constexpr), path (the LABEL_SUMS constexpr), GPU generation (feat_ptr's device) and tile loads (the
    TMA constexpr)."""

    def prune(configs, named_args, **kwargs):
        if interpret:
            return configs

        def arg(name, default=None):
            return kwargs.get(name, named_args.get(name, default))

        feat = named_args["feat_ptr"]
        wanted = (precision_class(feat.dtype, arg("PRECISION")), bool(arg("LABEL_SUMS", False)),
                  arch_of(feat.device) >= 90, bool(arg("TMA", False)))  # fmt: skip
        return [c for c in configs if wanted in classes.get(c, ())] or configs

    return prune


def autotune(kind: str, restore_value=None):
    """triton.autotune for kernel `kind`, keyed on the shape buckets, BLOCK_D and precision (and EXTRA_KEY); under
    the interpreter the single INTERPRET_CONFIG (autotune then runs it without timing). restore_value: the
    arguments the kernel adds into, put back after each timing run."""
    configs, classes = _full_autotune_configs(kind)
    if INTERPRET:
        configs, classes = [_config(*INTERPRET_CONFIG)], {}
    prune = {"early_config_prune": pruner(classes)}
    key = AUTOTUNE_KEY + EXTRA_KEY.get(kind, [])

    def tune(fn):
        # Made directly rather than by triton.autotune, whose decorator drops do_bench in Triton 3.2 and 3.3; the
        # key's names that are the kernel's (the wide kernels have no LABEL_SUMS, TMA or BLOCK_D... of the others)
        return (_Interpreted if INTERPRET else Autotuner)(
            fn, fn.arg_names, configs, [k for k in key if k in fn.arg_names], reset_to_zero=None,
            restore_value=restore_value,
            prune_configs_by=prune, do_bench=_bench,
        )  # fmt: skip

    return tune if INTERPRET else lambda fn: keyed_by_arch(tune(fn))


class _Interpreted(Autotuner):
    """The autotuner under the interpreter: its one configuration, launched with its block sizes alone (the
    interpreter of Triton 3.2 refuses the launch options a Config adds, num_buffers_warp_spec and the like)."""

    def run(self, *args, **kwargs):
        return self.fn.run(*args, **kwargs, **self.configs[0].kwargs)


def _bench(kernel_call, quantiles):
    """The active driver's benchmarker, looked up when a candidate is timed: Triton 3.2 and 3.3 look it up when the
    autotuner is made, which raises at import on a machine without a GPU (the interpreter included)."""
    return triton.runtime.driver.active.get_benchmarker()(kernel_call, quantiles=quantiles)


def keyed_by_arch(tuner):
    """The autotuner with one cache of picks per GPU generation (of feat_ptr's device): Triton's key holds the named
    arguments and the dtypes, not the device, so in a process with an A100 and an H100 a pick made on one (a
    Hopper-only configuration, say) would be reused on the other. The first call per key is not thread-safe (as
    Triton's own autotuner is not): two threads tuning the same kernel at once may both time it."""
    caches, run = {}, tuner.run

    def run_on_arch(*args, **kwargs):
        feat = kwargs["feat_ptr"] if "feat_ptr" in kwargs else args[0]
        tuner.cache = caches.setdefault(arch_of(feat.device) if feat.device.type == "cuda" else 0, {})
        return run(*args, **kwargs)

    tuner.run = run_on_arch
    return tuner


def bucket(n: int) -> int:
    """Shape bucket for the autotune key: the next power of two (one tuning per doubling, not per size)."""
    return triton.next_power_of_2(max(int(n), 1))
