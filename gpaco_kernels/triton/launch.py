"""Launchers of the Triton kernels: paco_fwd (the forward) and paco_bwd (both backward kernels).

Each launcher makes every tensor it passes contiguous (labels included: a strided int64 view read as contiguous gives
wrong labels), derives the kernels' constexpr flags in one place (`_Operands.flags`), launches on the tensors' device
(Triton launches on the current CUDA device otherwise), and leaves the loss algebra to ops/spec.py. Kernels go through
torch.library.wrap_triton, so that torch.compile sees them inside the op (ops/triton_backend.py registers the op
with torch.library.triton_op).

Split heuristic: with few anchor blocks (PaCo: 256 anchors against a queue of thousands) the columns are split over a
second grid dimension until there are about two programs per SM of the device, each split at least 256 columns
(shorter ones would spend more on writing and merging their partial results than on their columns).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import triton
from torch.library import wrap_triton

from ..ops.spec import ContrastInputs, OpParams, finalize_loss, gradient_coefficients
from .configs import CANDIDATES, INTERPRET, SPLIT_UNIT, bucket, precision_class
from .paco_bwd_cols import _paco_bwd_cols_kernel
from .paco_bwd_rows import _paco_bwd_rows_kernel
from .paco_fwd import _paco_fwd_kernel

MAX_DIM = 128  # the backward keeps a BLOCK x D accumulator in registers; the configurations are sized for D <= 128
PROGRAMS_PER_SM = 2  # split the columns until the grid has about this many programs per SM
MIN_SPLIT_COLUMNS = 256
INTERPRETER_SM_COUNT = 132  # the interpreter has no device: the split is computed as for an H100
FORCE_COLS_PER_SPLIT = None  # tests set it to exercise the split-columns variant on small shapes


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
    # TF32 only where torch allows it for float32 matmuls; half inputs use their own tensor-core path.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
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

    def flags(self) -> dict:
        """The row kernels' constexpr flags, derived once."""
        return dict(
            HAS_CLASSES=self.C > 0,
            FROM_LOGITS=self.from_logits,
            HAS_BIAS=self.has_bias,
            EXCLUDE=self.exclude,
            HAS_BATCH=self.N > 0,
            HAS_QUEUE=self.K > 0,
        )

    def tiles(self) -> dict:
        """Constexprs and autotune key arguments every kernel takes (BLOCK_M/BLOCK_N and warps come from autotune)."""
        dtype = self.feats.dtype
        return dict(
            BLOCK_D=max(16, triton.next_power_of_2(self.D)),
            UPCAST=_upcast(dtype),
            PRECISION=_precision(dtype),
        )

    def split(self, cols_per_split=None) -> tuple[int, int]:
        """(cols_per_split, splits) of the row kernels."""
        cols_per_split = cols_per_split or FORCE_COLS_PER_SPLIT
        if cols_per_split is None:
            cols_per_split = column_split(
                self.A, self.total_cols, precision_class(self.feats.dtype), sm_count(self.feats.device)
            )
        return cols_per_split, triton.cdiv(max(self.total_cols, 1), cols_per_split)


def _scalars(p: OpParams) -> dict:
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


def check_supported(x: ContrastInputs) -> None:
    if x.features.dtype == torch.float64:
        raise ValueError(
            "backend='triton' takes float32, bfloat16 or float16 features, got float64; "
            "use backend='cpu' or 'torch' for float64"
        )
    if x.features.shape[1] > MAX_DIM:
        raise ValueError(f"backend='triton' supports feature dims up to {MAX_DIM}, got D = {x.features.shape[1]}")


def paco_fwd(x: ContrastInputs, p: OpParams, cols_per_split=None):
    """Per-anchor loss, lse and P (float32, each (A,)). cols_per_split overrides the split heuristic."""
    check_supported(x)
    o = _Operands.of(x, p)
    cols_per_split, splits = o.split(cols_per_split)
    part = torch.empty((4, splits, o.A), device=o.feats.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(o.A, meta["BLOCK_M"]), splits)

    with _on_device(o.feats):
        wrap_triton(_paco_fwd_kernel)[grid](
            # data pointers
            o.feats, o.labels, o.queue, o.queue_labels, o.logits, o.centers, o.bias, part,
            # shapes and strides
            o.A, o.N, o.K, o.C, o.D, cols_per_split,
            o.feats.stride(0), o.queue.stride(0), o.logits.stride(0), o.centers.stride(0),
            bucket(o.A), bucket(o.total_cols),
            # constants
            **_scalars(p), **o.flags(), **o.tiles(),
        )  # fmt: skip
    return _merge_splits(part, o.labels[: o.A], p)


def _merge_splits(part, anchor_labels, p: OpParams):
    """Exact merge of the splits' partial sums: m = max m_s, z = sum z_s exp(m_s - m), the plain sums add."""
    m_s, z_s, wl_s, pos_s = part
    m = m_s.max(dim=0).values
    shift = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # a row of -inf logits: exp(-inf - 0) = 0
    z = (z_s * torch.exp(m_s - shift)).sum(dim=0)
    wl, pos = wl_s.sum(dim=0), pos_s.sum(dim=0)
    lse = m + torch.log(z + p.lse_eps)
    return finalize_loss(wl, pos, lse, anchor_labels, p), lse, pos


def paco_bwd(x: ContrastInputs, p: OpParams, lse, pos, grad_loss, needs):
    """Gradients (features, center_logits, centers) in the dtypes of those inputs, each None when not needed."""
    need_features, need_logits, need_centers = needs
    check_supported(x)
    o = _Operands.of(x, p)
    feats, A, D = o.feats, o.A, o.D
    a, inv_pos = gradient_coefficients(grad_loss.to(torch.float32), pos, o.labels[:A], p)
    lse = lse.to(torch.float32).contiguous()
    scalars, tiles = _scalars(p), o.tiles()
    # Few anchors against many columns: the columns are split as in the forward; each split writes its own part of
    # dAnchors, summed below in a fixed order (deterministic).
    cols_per_split, splits = o.split()
    anchor_parts = torch.empty((splits, A, D), device=feats.device, dtype=torch.float32)
    grad_logits = torch.empty_like(o.logits) if need_logits else o.logits

    def row_grid(meta):
        return (triton.cdiv(A, meta["BLOCK_M"]), splits)

    # The column kernel rounds a H to the input dtype: a normalised to |a| <= 1 there, the scale restored after.
    a_max = a.abs().max().clamp(min=torch.finfo(torch.float32).tiny)
    a_unit = (a / a_max).contiguous()

    def columns(segment, matrix, scale, with_bias):
        out = torch.empty((matrix.shape[0], D), device=feats.device, dtype=torch.float32)
        wrap_triton(_paco_bwd_cols_kernel)[lambda meta: (triton.cdiv(matrix.shape[0], meta["BLOCK_N"]),)](
            # data pointers
            feats, o.labels, matrix, o.bias, lse, a_unit, inv_pos, out,
            # shapes and strides
            A, matrix.shape[0], D, feats.stride(0), matrix.stride(0), out.stride(0),
            bucket(A), bucket(matrix.shape[0]),
            # constants
            scale, scalars["alpha"], scalars["beta_on"], scalars["beta_off"], scalars["gamma"],
            SEGMENT=segment, HAS_BIAS=with_bias, EXCLUDE=o.exclude, **tiles,
        )  # fmt: skip
        return out * a_max

    with _on_device(feats):
        wrap_triton(_paco_bwd_rows_kernel)[row_grid](
            # data pointers
            feats, o.labels, o.queue, o.queue_labels, o.logits, o.centers, o.bias,
            lse, a, inv_pos,
            anchor_parts, grad_logits,
            # shapes and strides
            A, o.N, o.K, o.C, D, cols_per_split,
            feats.stride(0), o.queue.stride(0), o.logits.stride(0), o.centers.stride(0),
            anchor_parts.stride(1), grad_logits.stride(0),
            bucket(A), bucket(o.total_cols),
            # constants
            **scalars, **o.flags(), NEED_LOGITS=need_logits, **tiles,
        )  # fmt: skip
        grad_anchors = anchor_parts[0] if splits == 1 else anchor_parts.sum(dim=0)
        grad_features = None
        if need_features:
            if o.N and p.batch_column_grad:  # else the batch rows are detached copies as columns
                grad_features = columns(1, feats, scalars["t_scale"], False)
            else:
                grad_features = torch.zeros((o.feats.shape[0], D), device=feats.device, dtype=torch.float32)
            grad_features[:A] += grad_anchors
        grad_centers = columns(0, o.centers, scalars["c_scale"], o.has_bias) if need_centers else None
    return (
        None if grad_features is None else grad_features.to(x.features.dtype),
        grad_logits if need_logits else None,
        None if grad_centers is None else grad_centers.to(x.centers.dtype),
    )
