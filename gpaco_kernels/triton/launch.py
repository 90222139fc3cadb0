"""Launchers of the Triton kernels: paco_fwd (the forward: sweep and finalize) and paco_bwd (the backward: row and
column sweeps, and the epilogue that finishes dFeatures).

A step is its kernels and nothing else on the device: normalization, the split merge, the loss and its reduction,
the backward coefficients, the split sum of dAnchors, the normalization's backward and the output casts all happen
inside the kernels; the launchers only allocate outputs. Nothing is read back to the host: the label range is
checked by the kernels and asserted on the device (torch._assert_async, as torch's cross-entropy asserts its
targets). Each launcher makes every tensor it passes contiguous (labels included: a strided int64 view read as
contiguous gives wrong labels; a no-op for the contiguous tensors of a training step), derives the kernels' constexpr
flags in one place (`_Operands.flags`) and launches on the tensors' device (Triton launches on the current CUDA
device otherwise).

`launch` wraps each kernel before it is launched: torch.library.wrap_triton inside the op registered with
torch.library.triton_op (ops/triton_backend.py), so that torch.compile sees the kernels; `direct` (the kernel
itself) on the eager path, which skips wrap_triton's per-call tracing machinery.

Positives by label sums (LABEL_SUMS): on large steps the batch and queue tiles compare no labels; the positive
terms come from per-group sums of the contrast rows (ops/spec.py label_groups, then _paco_label_sums_kernel), O((N + K)
D) once per direction. Small steps keep the compares in the tiles: there the sums' extra launches (the sort and the
search behind the group ids, and the sums kernel) cost more host time than the compares cost the GPU.

Tile loads by the tensor memory accelerator (TMA, `tma_rows`): on Hopper and later, on the eager path, the
label-sums sweeps load their tiles through device-side tensor descriptors (tiles.rows_descriptor), which take one
instruction per tile and fill what lies past the rows' end or D with zeros: no address or mask per element in the
loop (sm_90, pixel bf16: the forward's loop 325 -> 254 instructions per warp). A descriptor lives in 128 bytes of
global memory per program that Triton asks of the allocator set with triton.set_allocator at launch; where the user
set none, `_descriptor_scratch` lends one from torch's caching allocator for these launches only.
GPACO_TRITON_TMA (TMA): "auto" (the default) takes them with a Triton at least TMA_CHECKED_TRITON (the version the
compile report ran with: descriptor APIs moved between releases), "1" with any Triton that has them, "0" never.

Split heuristic: with few anchor blocks (PaCo: 256 anchors against a queue of thousands) the columns are split over a
second grid dimension until there are about two programs per SM of the device, each split at least 128 columns
(shorter ones would spend more on writing and merging their partial results than on their columns).

Backward shape (BACKWARD): "two-kernel" (the default) recomputes each tile's logits in the row kernel (dAnchors)
and in the column kernel (dColumns); every sum has a fixed order, so results are deterministic. "one-pass" lets the
column kernel of the batch columns add their part of dAnchors too, by float32 atomics (paco_bwd_one_pass.py), where
it applies: label sums, 'mean' or 'sum', dFeatures wanted (its row sweep then runs unsplit); the last bits of
dAnchors then vary from run to run, and torch.use_deterministic_algorithms(True) keeps the two-kernel backward.
The GPU model (tools/gpu_model.py) estimates the one pass no faster at the pixel loss's sizes, so it is not the
default.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import triton
from torch.library import wrap_triton

from .._checks import range_message
from ..ops.spec import NORM_EPS, ContrastInputs, LabelGroups, OpParams, label_groups, normalize_backward
from .configs import CANDIDATES, FIXED, INTERPRET, SPLIT_UNIT, TRITON_RELEASE, bucket, precision_class
from .paco_bwd_cols import _paco_bwd_cols_kernel
from .paco_bwd_one_pass import _paco_bwd_one_pass_kernel
from .paco_bwd_rows import _paco_bwd_rows_kernel
from .paco_epilogue import _paco_epilogue_kernel
from .paco_finalize import _paco_finalize_kernel
from .paco_fwd import _paco_fwd_kernel
from .paco_label_sums import _paco_label_sums_kernel
from .paco_wide import _paco_wide_bwd_cols_kernel, _paco_wide_bwd_rows_kernel, _paco_wide_fwd_kernel

# Feature dims up to MAX_DIM take the tile kernels, which hold BLOCK x D tiles (and the backward a BLOCK x D float32
# accumulator) in registers; wider ones the wide kernels (paco_wide), which tile the features: products over
# BLOCK_K features at a time, each backward program BLOCK_D of the output's features. (BLOCK_K, BLOCK_D) per class:
MAX_DIM = 128
WIDE_CHUNKS = {"half": (64, 128), "fp32": (32, 64), "fp32x3": (32, 64)}
PROGRAMS_PER_SM = 2  # split the columns until the grid has about this many programs per SM
MIN_SPLIT_COLUMNS = 128  # with 64-row anchor tiles, 256 left a GPaCo LT step (256 anchors) short of one program per SM
INTERPRETER_SM_COUNT = 132  # the interpreter has no device: the split is computed as for an H100
FORCE_COLS_PER_SPLIT = None  # tests set it to exercise the split-columns variant on small shapes
# Anchor x sample-column pairs from which the positives come from label sums (an estimate of where the tiles'
# compares cost more than the sums' ~10 extra launches; to be settled on a GPU): SupCon at 4096 samples and the
# pixel loss use them, the PaCo LT step (256 anchors, 8704 columns) keeps the compares.
LABEL_SUMS_MIN_PAIRS = 1 << 24
FORCE_LABEL_SUMS = None  # tests set True / False to run one path on any shape
LABEL_SUMS_BLOCK_R = FIXED["label_sums"][0]["BLOCK_R"]  # tests make it small
REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}  # the kernels' REDUCTION constexpr
FINALIZE_BLOCK = FIXED["finalize"][0]["BLOCK"]  # tests make these small, to run several blocks
EPILOGUE_BLOCK_R = FIXED["epilogue"][0]["BLOCK_R"]
# Tile loads by tensor descriptors (tma_rows): "auto" where this Triton is one whose compiled descriptor loads the
# compile report has checked (TMA_CHECKED_TRITON and later), "1" with any Triton that has them, "0" never.
TMA_SETTINGS = ("auto", "1", "0")
TMA = os.environ.get("GPACO_TRITON_TMA", "auto")  # read at each call; the environment variable sets it for a process
TMA_CHECKED_TRITON = (3, 9)
FORCE_TMA = None  # tests set True to run the descriptor loads under the interpreter (where no allocator is asked)
BACKWARDS = ("two-kernel", "one-pass")  # the backward's shapes (module docstring), read at each call
BACKWARD = os.environ.get("GPACO_TRITON_BACKWARD", "two-kernel")  # the environment variable sets it for a process


@functools.cache
def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SM_COUNT


def column_split(num_anchors: int, total_cols: int, precision: str, sms: int) -> int:
    """Columns per split (a multiple of SPLIT_UNIT, so of every BLOCK_N autotune may pick): all of them unless the
    anchor blocks alone cannot fill the device."""
    block_m = min(c[0] for c in CANDIDATES[("fwd", precision)])
    row_programs = triton.cdiv(num_anchors, block_m)
    target = PROGRAMS_PER_SM * sms
    total = max(total_cols, 1)
    if row_programs >= target:
        return total
    splits = min(triton.cdiv(target, row_programs), max(1, total // MIN_SPLIT_COLUMNS))
    return triton.cdiv(total, splits * SPLIT_UNIT) * SPLIT_UNIT


def _upcast(dtype: torch.dtype) -> bool:
    # Only bfloat16's tl.dot is wrong under the interpreter; float16 and float32 run the compiled path's dtypes.
    return INTERPRET and dtype == torch.bfloat16


def _precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision for float32 operands: TF32 where torch allows it for float32 matmuls, else 3xTF32
    (each operand split into a TF32 high part and a TF32 remainder, three tensor-core products: float32 accuracy
    at tensor-core speed; an IEEE dot runs on the CUDA cores, 7x slower on an H100). Half inputs use their own
    tensor-core path."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "tf32x3"
    return "tf32"


@dataclass
class _Operands:
    """Contiguous operands of one call; absent tensors are replaced by features (never read: their flag is off)."""

    feats: torch.Tensor
    labels: torch.Tensor
    queue: torch.Tensor
    queue_labels: torch.Tensor
    logits: torch.Tensor
    centers: torch.Tensor
    bias: torch.Tensor
    A: int
    N: int  # batch columns (0 when batch rows are not contrast columns)
    K: int
    C: int
    D: int
    from_logits: bool
    has_bias: bool
    exclude: bool

    @classmethod
    def of(cls, x: ContrastInputs, p: OpParams) -> _Operands:
        feats = x.features.contiguous()
        labels = x.labels.contiguous()
        K = 0 if x.queue is None else x.queue.shape[0]
        return cls(
            feats=feats,
            labels=labels,
            queue=x.queue.contiguous() if K else feats,
            queue_labels=x.queue_labels.contiguous() if K else labels,
            logits=x.center_logits.contiguous() if x.center_logits is not None else feats,
            centers=x.centers.contiguous() if x.centers is not None else feats,
            bias=x.center_bias.to(torch.float32).contiguous() if x.center_bias is not None else feats,
            A=p.num_anchors,
            N=feats.shape[0] if p.batch_columns else 0,
            K=K,
            C=x.num_classes,
            D=feats.shape[1],
            from_logits=x.center_logits is not None,
            has_bias=x.center_bias is not None,
            exclude=p.exclude_positive_class,
        )

    @property
    def total_cols(self) -> int:
        return self.C + self.N + self.K

    @property
    def wide(self) -> bool:
        """Feature dims past MAX_DIM: the wide kernels (paco_wide)."""
        return self.D > MAX_DIM

    @property
    def label_sums(self) -> bool:
        """Positives by label sums (module docstring): there are batch or queue columns, and enough pairs (never
        with wide features: the wide kernels compare labels per tile)."""
        if self.wide:
            return False
        sample_cols = self.N + self.K
        if FORCE_LABEL_SUMS is not None:
            return FORCE_LABEL_SUMS and sample_cols > 0
        return sample_cols > 0 and self.A * sample_cols >= LABEL_SUMS_MIN_PAIRS

    def flags(self) -> dict:
        """The row kernels' constexpr flags, derived once."""
        return dict(
            HAS_CLASSES=self.C > 0,
            FROM_LOGITS=self.from_logits,
            HAS_BIAS=self.has_bias,
            EXCLUDE=self.exclude,
            HAS_BATCH=self.N > 0,
            HAS_QUEUE=self.K > 0,
            LABEL_SUMS=self.label_sums,
        )

    def tiles(self, tma: bool) -> dict:
        """Constexprs every tile kernel takes (BLOCK_M/BLOCK_N and warps come from autotune); tma: tma_rows."""
        dtype = self.feats.dtype
        return dict(
            BLOCK_D=max(16, triton.next_power_of_2(self.D)),
            UPCAST=_upcast(dtype),
            PRECISION=_precision(dtype),
            TMA=tma,
        )

    def split(self, cols_per_split=None) -> tuple[int, int]:
        """(cols_per_split, splits) of the row kernels."""
        cols_per_split = cols_per_split or FORCE_COLS_PER_SPLIT
        if cols_per_split is None:
            dtype = self.feats.dtype
            cols_per_split = column_split(
                self.A, self.total_cols, precision_class(dtype, _precision(dtype)), sm_count(self.feats.device)
            )
        return cols_per_split, triton.cdiv(max(self.total_cols, 1), cols_per_split)


def _device_descriptors_supported() -> bool:
    """This Triton makes tensor descriptors in a kernel and asks a context-local allocator for their memory (the
    scratch `_descriptor_scratch` lends)."""
    from contextvars import ContextVar

    try:
        from triton.runtime import _allocation
    except ImportError:
        return False
    return hasattr(triton.language, "make_tensor_descriptor") and isinstance(
        getattr(_allocation, "_allocator", None), ContextVar
    )


def tma_rows(o: _Operands, launch) -> bool:
    """Whether the label-sums sweeps load their tiles by tensor descriptors (module docstring): on the eager path
    (`direct`: under torch.compile the kernels are launched by Inductor's code, outside _descriptor_scratch), on a
    GPU of compute capability 9 or later, with rows the copy engine takes (a 16-byte aligned start, rows a multiple
    of 16 bytes apart, D contiguous), as TMA says (above: by default with a Triton whose descriptor loads the compile
    report has checked). Decided from the launch path and the device before any data pointer is read: under
    torch.compile the launchers run on tensors that have none (FunctionalTensor, FakeTensor)."""
    if not o.label_sums:
        return False
    if FORCE_TMA is not None:  # tests: whatever the device and path, where the rows allow it
        return FORCE_TMA and _rows_aligned(o)
    if TMA not in TMA_SETTINGS:
        raise ValueError(
            f"gpaco_kernels.triton.launch.TMA (or GPACO_TRITON_TMA) is {TMA!r}; expected one of "
            f"{', '.join(map(repr, TMA_SETTINGS))}"
        )
    if TMA == "0" or launch is not direct or o.feats.device.type != "cuda":
        return False
    if TMA == "auto" and _triton_version() < TMA_CHECKED_TRITON:
        return False
    hopper = torch.cuda.get_device_capability(o.feats.device)[0] >= 9
    return _rows_aligned(o) and hopper and _device_descriptors_supported()


def _without_data(t: torch.Tensor) -> bool:
    """A tensor of a trace (torch.compile's AOT dispatch, fake tensors): it has no data pointer."""
    from torch._subclasses.fake_tensor import is_fake
    from torch._subclasses.functional_tensor import FunctionalTensor

    return isinstance(t, FunctionalTensor) or is_fake(t)


def _rows_aligned(o: _Operands) -> bool:
    """The feature (and queue) rows as a descriptor takes them: 16-byte aligned start and pitch, D contiguous. The
    start of a traced tensor is known only relative to its storage (allocations are aligned far beyond 16 bytes)."""
    rows = [o.feats, o.queue] if o.K else [o.feats]

    def start(t):
        return t.storage_offset() * t.element_size() if _without_data(t) else t.data_ptr()

    return all(start(t) % 16 == 0 and t.stride(0) * t.element_size() % 16 == 0 and t.stride(1) == 1 for t in rows)


def _triton_version() -> tuple[int, int]:
    return TRITON_RELEASE


@contextlib.contextmanager
def _descriptor_scratch(device: torch.device, tma: bool):
    """With tma on a GPU and no allocator set by the user (triton.set_allocator), the global memory Triton asks for
    the kernels' tensor descriptors comes from torch's caching allocator on `device` (stream-ordered, so it is
    reused only after the launch that took it), for the launches inside this block only."""
    if not tma or device.type != "cuda":
        yield
        return
    from triton.runtime import _allocation

    if not isinstance(_allocation._allocator.get(), _allocation.NullAllocator):  # the user's own serves
        yield
        return

    def scratch(size: int, alignment: int, stream):
        return torch.empty(size, device=device, dtype=torch.int8)

    token = _allocation._allocator.set(scratch)
    try:
        yield
    finally:
        _allocation._allocator.reset(token)


def _scalars(p: OpParams) -> dict:
    # The forward's sample sweeps take the max of the raw products and scale it once (tiles.online_lse_step_scaled),
    # which is right for a positive scale only. The public functions check this; the op itself can be called directly.
    if not p.temperature > 0:
        raise ValueError(f"temperature must be positive for the Triton kernels, got {p.temperature!r}")
    return dict(
        t_scale=1.0 / p.temperature,
        c_scale=1.0 / p.center_temperature,
        alpha=p.alpha,
        beta_on=p.beta_on,
        beta_off=p.beta_off,
        gamma=p.gamma,
    )


def _on_device(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def unsupported(dtype: torch.dtype, dim: int | None) -> str | None:
    """Why the kernels cannot take features of this dtype and feature dim, or None: the public functions route around
    it (backend='auto' takes the 'torch' backend there, ops.dispatch.resolve_backend)."""
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return "the Triton kernels take float32, bfloat16 or float16"
    return None


def check_supported(x: ContrastInputs) -> None:
    """For a direct call of the op (the public functions have resolved the backend with `unsupported` already)."""
    reason = unsupported(x.features.dtype, x.features.shape[1])
    if reason is not None:
        raise ValueError(f"backend='triton': {reason}, got {x.features.dtype} features of dim {x.features.shape[1]}")


@dataclass
class _LabelSums:
    """What the kernels read of the positives by label sums; with them off, placeholders never read."""

    group: torch.Tensor
    sums: torch.Tensor
    counts: torch.Tensor
    flag: torch.Tensor
    coef_sums: torch.Tensor


def _label_sums(o: _Operands, p: OpParams, launch, coefficients=None) -> _LabelSums:
    """The per-group sums of the contrast rows (and, for the backward, with coefficients = (pos, grad_loss,
    counted), the sums R of a / P times the anchors' unit rows) by _paco_label_sums_kernel, one program per group id;
    group is what the row kernels read for a row's group (the labels themselves with a class block)."""
    if not o.label_sums:
        return _LabelSums(o.labels, o.feats, o.feats, o.labels, o.feats)
    groups: LabelGroups = label_groups(o.labels, o.queue_labels if o.K else None, o.C)
    device, G = o.feats.device, groups.num_groups
    sums = torch.empty((G, o.D), device=device, dtype=torch.float32)
    counts = torch.empty((G,), device=device, dtype=torch.float32)
    flag = torch.empty((1,), device=device, dtype=torch.int32)
    coef_sums = torch.empty_like(sums) if coefficients else sums
    pos, grad_loss, counted = coefficients or (sums, sums, sums)
    (tile, num_warps) = FIXED["label_sums"]
    launch(_paco_label_sums_kernel)[(G,)](
        o.feats, o.queue, o.labels, groups.order, groups.sorted_labels, groups.bounds, sums, counts, flag,
        pos, grad_loss, counted, coef_sums,
        o.feats.shape[0], o.K, o.A, o.C, o.D, o.feats.stride(0), o.queue.stride(0),
        p.loss_scale, p.ignore_index,
        CLASSES=o.C > 0, HAS_BATCH=o.N > 0, NORMALIZE=p.normalize, COEFFICIENTS=coefficients is not None,
        REDUCTION=REDUCTIONS[p.reduction], BLOCK_R=LABEL_SUMS_BLOCK_R, BLOCK_D=max(16, triton.next_power_of_2(o.D)),
        CHECK_BLOCK=tile["CHECK_BLOCK"], num_warps=num_warps,
    )  # fmt: skip
    return _LabelSums(o.labels if groups.group is None else groups.group, sums, counts, flag, coef_sums)


def direct(kernel):
    """The eager path's `launch`: the kernel itself."""
    return kernel


def traced():
    """The triton_op's `launch`: torch.library.wrap_triton, looked up at each call (the trace tests put a recording
    launcher in its place, tests/test_compile_trace.py)."""
    return wrap_triton


def paco_fwd(x: ContrastInputs, p: OpParams, cols_per_split=None, launch=None):
    """(loss, lse, P, counted): the loss reduced as p.reduction says, in the features' dtype ((A,) for 'none', else
    ()), lse and P per anchor (float32, (A,)) and the number of anchors not ignored (float32, (1,)).
    cols_per_split overrides the split heuristic; launch: `direct`, or by default wrap_triton (`traced`)."""
    launch = launch or traced()
    check_supported(x)
    o = _Operands.of(x, p)
    cols_per_split, splits = o.split(cols_per_split)
    device = o.feats.device
    part = torch.empty((5, splits, o.A), device=device, dtype=torch.float32)
    loss = torch.empty((o.A,) if p.reduction == "none" else (), device=device, dtype=o.feats.dtype)
    lse = torch.empty((o.A,), device=device, dtype=torch.float32)
    pos = torch.empty_like(lse)
    counted = torch.empty((1,), device=device, dtype=torch.float32)
    ok = torch.empty((1,), device=device, dtype=torch.int32)

    tma = tma_rows(o, launch)
    with _on_device(o.feats), _descriptor_scratch(device, tma):
        if o.wide:
            _wide_fwd(o, p, part, cols_per_split, launch)
        else:
            _tile_fwd(o, p, part, cols_per_split, tma, launch)
        launch(_paco_finalize_kernel)[(1,)](
            part, o.labels, loss, lse, pos, counted, ok,
            o.A, splits,
            p.ignore_index, p.loss_scale, p.lse_eps,
            REDUCTION=REDUCTIONS[p.reduction], BLOCK=min(FINALIZE_BLOCK, max(16, triton.next_power_of_2(o.A))),
            num_warps=FIXED["finalize"][1],
        )  # fmt: skip
    if o.C:  # labels index the class block: a label outside it is an error, found on the device, raised without a sync
        torch._assert_async(ok, _range_message(x, p))
    return loss, lse, pos, counted


def _tile_fwd(o: _Operands, p: OpParams, part, cols_per_split: int, tma: bool, launch) -> None:
    """The forward sweep's per-split partials into part, by _paco_fwd_kernel (after the label sums it reads)."""
    sums = _label_sums(o, p, launch)
    launch(_paco_fwd_kernel)[lambda meta: (triton.cdiv(o.A, meta["BLOCK_M"]), part.shape[1])](
        # data pointers
        o.feats, o.labels, o.queue, o.queue_labels, o.logits, o.centers, o.bias,
        sums.group, sums.sums, sums.counts, sums.flag, part,
        # shapes and strides
        o.A, o.N, o.K, o.C, o.D, cols_per_split,
        o.feats.stride(0), o.queue.stride(0), o.logits.stride(0), o.centers.stride(0),
        bucket(o.A), bucket(o.total_cols),
        # constants
        **_scalars(p), ignore_index=p.ignore_index, **o.flags(), NORMALIZE=p.normalize, **o.tiles(tma),
    )  # fmt: skip


def _unit_rows(rows: torch.Tensor, normalize: bool) -> torch.Tensor:
    """rows / max(|row|, NORM_EPS) in rows' dtype (the norm in float32), or rows themselves without normalize: the
    copy the wide kernels read (the tile kernels normalize tile by tile instead)."""
    if not normalize:
        return rows
    wide = rows.float()
    return (wide * torch.rsqrt((wide * wide).sum(dim=1, keepdim=True).clamp(min=NORM_EPS * NORM_EPS))).to(rows.dtype)


def _wide_rows(o: _Operands, p: OpParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, queue, centers) as the wide kernels read them: normalized copies where the loss normalizes (absent
    ones stay the features' placeholder, never read)."""
    feats = _unit_rows(o.feats, p.normalize)
    queue = _unit_rows(o.queue, p.normalize) if o.K else feats
    centers = _unit_rows(o.centers, p.normalize) if o.C and not o.from_logits else feats
    return feats, queue, centers


def _wide_constexprs(o: _Operands) -> tuple[dict, int]:
    """(the constexprs every wide kernel takes, BLOCK_D of the backward's programs) for these features' dtype."""
    dtype = o.feats.dtype
    block_k, block_d = WIDE_CHUNKS[precision_class(dtype, _precision(dtype))]
    return dict(BLOCK_K=block_k, UPCAST=_upcast(dtype), PRECISION=_precision(dtype)), block_d


def _flags_without_label_sums(o: _Operands) -> dict:
    return {k: v for k, v in o.flags().items() if k != "LABEL_SUMS"}


def _wide_fwd(o: _Operands, p: OpParams, part, cols_per_split: int, launch) -> None:
    """The forward sweep's per-split partials into part, by _paco_wide_fwd_kernel (feature dims past MAX_DIM)."""
    feats, queue, centers = _wide_rows(o, p)
    launch(_paco_wide_fwd_kernel)[lambda meta: (triton.cdiv(o.A, meta["BLOCK_M"]), part.shape[1])](
        # data pointers
        feats, o.labels, queue, o.queue_labels, o.logits, centers, o.bias, part,
        # shapes and strides
        o.A, o.N, o.K, o.C, o.D, cols_per_split,
        feats.stride(0), queue.stride(0), o.logits.stride(0), centers.stride(0),
        bucket(o.A), bucket(o.total_cols),
        # constants
        **_scalars(p), ignore_index=p.ignore_index, **_flags_without_label_sums(o), **_wide_constexprs(o)[0],
    )  # fmt: skip


def _wide_bwd(o: _Operands, p: OpParams, lse, pos, counted, grad_loss, needs, launch) -> tuple:
    """paco_bwd for feature dims past MAX_DIM: dAnchors by _paco_wide_bwd_rows_kernel (one part per column split, each
    program a block of features), the batch columns' and the centers' gradients by _paco_wide_bwd_cols_kernel, all
    with respect to the unit rows in float32; summed (in a fixed order) and taken back through the normalization
    here."""
    need_features, need_logits, need_centers = needs
    feats, queue, centers = _wide_rows(o, p)
    A, D, reduction = o.A, o.D, REDUCTIONS[p.reduction]
    scalars, (constexprs, block_d) = _scalars(p), _wide_constexprs(o)
    common = dict(loss_scale=p.loss_scale, ignore_index=p.ignore_index, REDUCTION=reduction)
    cols_per_split, splits = o.split()
    parts = torch.empty((splits, A, D), device=feats.device, dtype=torch.float32)
    grad_logits = torch.empty_like(o.logits) if need_logits else o.logits

    def columns(segment: int, rows: torch.Tensor, scale: float, with_bias: bool) -> torch.Tensor:
        out = torch.empty(rows.shape, device=feats.device, dtype=torch.float32)
        grid = lambda meta: (triton.cdiv(rows.shape[0], meta["BLOCK_N"]), triton.cdiv(D, block_d))  # noqa: E731
        launch(_paco_wide_bwd_cols_kernel)[grid](
            feats, o.labels, rows, o.bias, lse, pos, grad_loss, counted, out,
            A, rows.shape[0], D, feats.stride(0), rows.stride(0), out.stride(0), bucket(A), bucket(rows.shape[0]),
            scale, scalars["alpha"], scalars["beta_on"], scalars["beta_off"], scalars["gamma"], **common,
            SEGMENT=segment, HAS_BIAS=with_bias, EXCLUDE=o.exclude, BLOCK_D=block_d, **constexprs,
        )  # fmt: skip
        return out

    grad_features = grad_centers = None
    with _on_device(feats):
        row_grid = lambda meta: (triton.cdiv(A, meta["BLOCK_M"]), splits, triton.cdiv(D, block_d))  # noqa: E731
        launch(_paco_wide_bwd_rows_kernel)[row_grid](
            feats, o.labels, queue, o.queue_labels, o.logits, centers, o.bias,
            lse, pos, grad_loss, counted, parts, grad_logits,
            A, o.N, o.K, o.C, D, cols_per_split,
            feats.stride(0), queue.stride(0), o.logits.stride(0), centers.stride(0),
            parts.stride(1), grad_logits.stride(0), bucket(A), bucket(o.total_cols),
            **scalars, **common, **_flags_without_label_sums(o), NEED_LOGITS=need_logits, BLOCK_D=block_d,
            **constexprs,
        )  # fmt: skip
        if need_features:
            if o.N and p.batch_column_grad:
                unit_grad = columns(1, feats, scalars["t_scale"], False)
            else:
                unit_grad = torch.zeros(feats.shape, device=feats.device, dtype=torch.float32)
            unit_grad[:A] += parts.sum(dim=0)
            grad = normalize_backward(o.feats, unit_grad) if p.normalize else unit_grad
            grad_features = grad.to(o.feats.dtype)
        if need_centers:
            unit_grad = columns(0, centers, scalars["c_scale"], o.has_bias)
            grad = normalize_backward(o.centers, unit_grad) if p.normalize else unit_grad
            grad_centers = grad.to(o.centers.dtype)
    return grad_features, grad_logits if need_logits else None, grad_centers


def _range_message(x: ContrastInputs, p: OpParams) -> str:
    names = "labels" if x.queue is None else "labels or queue_labels"
    return (
        f"gpaco_kernels: {range_message(names, x.num_classes, p.ignore_index)}, found a value outside (checked on "
        "the device by backend='triton'; gpaco_kernels.sync_checks(True) names the value, with a host sync)"
    )


def one_pass_backward(o: _Operands, p: OpParams, need_features: bool) -> bool:
    """Whether this backward takes the one-pass shape (module docstring): BACKWARD asks for it, torch's deterministic
    mode is off, and it applies (label sums, batch columns that take a gradient, 'mean' or 'sum', dFeatures wanted).
    The one pass runs its row sweep unsplit (paco_bwd), so a split forward does not turn it down."""
    if BACKWARD not in BACKWARDS:
        raise ValueError(
            f"gpaco_kernels.triton.launch.BACKWARD (or GPACO_TRITON_BACKWARD) is {BACKWARD!r}; expected one of "
            f"{', '.join(map(repr, BACKWARDS))}"
        )
    applies = o.label_sums and o.N > 0 and p.batch_column_grad and p.reduction != "none"
    wanted = BACKWARD == "one-pass" and not torch.are_deterministic_algorithms_enabled()
    return bool(wanted and applies and need_features)


def paco_bwd(x: ContrastInputs, p: OpParams, lse, pos, counted, grad_loss, needs, launch=None):
    """Gradients (features, center_logits, centers) in the dtypes of those inputs, each None when not needed.
    grad_loss has the loss's shape; lse, pos and counted are paco_fwd's; launch as paco_fwd's."""
    launch = launch or traced()
    need_features, need_logits, need_centers = needs
    check_supported(x)
    o = _Operands.of(x, p)
    if o.wide:
        return _wide_bwd(o, p, lse, pos, counted, grad_loss.contiguous(), needs, launch)
    feats, A, D = o.feats, o.A, o.D
    grad_loss = grad_loss.contiguous()
    tma = tma_rows(o, launch)
    scalars, tiles = _scalars(p), o.tiles(tma)
    common = dict(loss_scale=p.loss_scale, ignore_index=p.ignore_index, NORMALIZE=p.normalize)
    reduction = REDUCTIONS[p.reduction]
    # Few anchors against many columns: the columns are split as in the forward; each split writes its own part of
    # dAnchors, summed in a fixed order (deterministic) by the epilogue.
    one_pass = one_pass_backward(o, p, need_features)
    # The one pass: one column split. It is asked for by name, so it runs where it applies rather than declining
    # wherever the split heuristic would split (SupCon at 4096 samples on an H100: 3 splits); its column kernel has
    # a program per 64 batch columns besides the row kernel's, so the device is not left as empty as unsplit alone.
    cols_per_split, splits = o.split(max(o.total_cols, 1) if one_pass else None)
    # one pass: one more part, zeros, that the batch columns' kernel adds their share of dAnchors into
    parts = torch.empty((splits + one_pass, A, D), device=feats.device, dtype=torch.float32)
    if one_pass:
        parts[splits].zero_()
    grad_logits = torch.empty_like(o.logits) if need_logits else o.logits

    def row_grid(meta):
        return (triton.cdiv(A, meta["BLOCK_M"]), splits)

    def columns(segment, matrix, scale, with_bias, finish, anchor_grad=False):
        """The gradient of the rows of `matrix` (features or centers) as columns: finished in matrix's dtype, or
        float32 for the epilogue to finish; with anchor_grad (one pass) also their part of dAnchors, into the last
        of `parts`."""
        out = (
            torch.empty_like(matrix) if finish else torch.empty(matrix.shape, device=feats.device, dtype=torch.float32)
        )
        kernel = _paco_bwd_one_pass_kernel if anchor_grad else _paco_bwd_cols_kernel
        launch(kernel)[lambda meta: (triton.cdiv(matrix.shape[0], meta["BLOCK_N"]),)](
            # data pointers
            feats, o.labels, matrix, o.bias, lse, pos, grad_loss, counted, out, parts[-1],
            # shapes and strides
            A, matrix.shape[0], D, feats.stride(0), matrix.stride(0), out.stride(0),
            bucket(A), bucket(matrix.shape[0]),
            # constants
            scale, scalars["alpha"], scalars["beta_on"], scalars["beta_off"], scalars["gamma"], **common,
            SEGMENT=segment, HAS_BIAS=with_bias, EXCLUDE=o.exclude, REDUCTION=reduction, FINISH=finish,
            LABEL_SUMS=o.label_sums and segment == 1, ANCHOR_GRAD=anchor_grad,
            **dict(tiles, TMA=tiles["TMA"] and segment == 1),  # the centers' kernel loads by pointers
        )  # fmt: skip
        return out

    grad_features = grad_centers = None
    with _on_device(feats), _descriptor_scratch(feats.device, tma):
        launch(_paco_bwd_rows_kernel)[row_grid](
            # data pointers
            feats, o.labels, o.queue, o.queue_labels, o.logits, o.centers, o.bias,
            lse, pos, grad_loss, counted, parts, grad_logits,
            # shapes and strides
            A, o.N, o.K, o.C, D, cols_per_split,
            feats.stride(0), o.queue.stride(0), o.logits.stride(0), o.centers.stride(0),
            parts.stride(1), grad_logits.stride(0),
            bucket(A), bucket(o.total_cols),
            # constants
            **scalars, **common, **o.flags(), REDUCTION=reduction, NEED_LOGITS=need_logits,
            BATCH_BY_COLUMNS=one_pass, **tiles,
        )  # fmt: skip
        if need_features:
            # dFeatures = the batch columns' gradient (when they take one) + dAnchors, finished by the epilogue.
            batch = None
            if o.N and p.batch_column_grad:
                batch = columns(1, feats, scalars["t_scale"], False, False, one_pass)
            grad_features = torch.empty_like(feats)
            # the positives' part of the batch and queue columns (LABEL_SUMS): from per-label sums, in the epilogue
            sums = _label_sums(o, p, launch, coefficients=(pos, grad_loss, counted))
            launch(_paco_epilogue_kernel)[(triton.cdiv(feats.shape[0], EPILOGUE_BLOCK_R),)](
                parts, parts if batch is None else batch, feats, grad_features,
                o.labels, sums.group, sums.sums, sums.coef_sums, pos, grad_loss, counted,
                feats.shape[0], A, o.C, splits + one_pass, D, feats.stride(0), grad_features.stride(0),
                p.alpha / p.temperature, p.loss_scale, p.ignore_index,
                HAS_COLS=batch is not None, NORMALIZE=p.normalize, LABEL_SUMS=o.label_sums, HAS_CLASSES=o.C > 0,
                HAS_BATCH=o.N > 0, REDUCTION=reduction, BLOCK_R=EPILOGUE_BLOCK_R, BLOCK_D=tiles["BLOCK_D"],
                num_warps=FIXED["epilogue"][1],
            )  # fmt: skip
        if need_centers:
            grad_centers = columns(0, o.centers, scalars["c_scale"], o.has_bias, True)
    return grad_features, grad_logits if need_logits else None, grad_centers
