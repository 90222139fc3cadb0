"""Triton kernels of the fused loss and their launchers.

    _paco_fwd_kernel       -> paco_fwd       per-anchor partial (m, z, sum w l, P) over a range of columns
    _paco_bwd_rows_kernel  -> paco_bwd       dAnchors (row-parallel) and dS
    _paco_bwd_cols_kernel  -> paco_bwd       dContrast of batch columns and dW of centers (column-parallel)

Columns are the segments [class block | batch | queue] of loss-spec.md, each with its own scale (1/tc or 1/t), bias
(log prior, class block only) and weights computed from labels inside the tile. The forward keeps an online
log-sum-exp; a 2-D grid splits the columns when there are too few anchor blocks to fill the GPU (PaCo: 256 anchors
against a queue of thousands), and the partial results merge exactly afterwards. The backward recomputes the
logits tile by tile from the inputs and the saved (lse, P); both backward kernels write disjoint outputs, so the
result is deterministic (no atomics).

Under the interpreter, tl.dot on bfloat16 operands is wrong (triton 3.9); the constexpr UPCAST loads operands as
float32 there (exact), while compiled GPU code keeps the half-precision dot with float32 accumulation.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Launch configurations per kernel and input kind, the largest found that compile without register spills for
# sm_80 and sm_90 at every BLOCK_D <= 128 and every flag variant (`python -m gpaco_kernels.tools.compile_report`
# checks them; CI runs it). Float32 dots (IEEE or TF32) take more registers than half-precision ones, hence smaller
# tiles. With 8 warps, ptxas caps float32 backward kernels at 80 or 128 registers and spills a few bytes; 4 warps
# do not spill.
CONFIGS = {
    ("fwd", "half"): dict(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=3),
    ("bwd_rows", "half"): dict(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=2),
    ("bwd_cols", "half"): dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2),
    ("fwd", "fp32"): dict(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=2),
    ("bwd_rows", "fp32"): dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1),
    ("bwd_cols", "fp32"): dict(BLOCK_M=16, BLOCK_N=32, num_warps=4, num_stages=1),
}
SPLIT_TARGET_PROGRAMS = 264  # about two waves of an H100's 132 SMs; split columns until the grid reaches this
MAX_DIM = 128  # the backward keeps a BLOCK x D accumulator in registers; the configs above are sized for D <= 128
FORCE_COLS_PER_SPLIT = None  # tests set it to exercise the split-columns variant on small shapes


@triton.jit
def _load_rows(ptr, rows, row_mask, stride, offs_d, D, UPCAST: tl.constexpr):
    x = tl.load(
        ptr + rows[:, None] * stride + offs_d[None, :], mask=row_mask[:, None] & (offs_d[None, :] < D), other=0.0
    )
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _segment_weights(
    SEGMENT: tl.constexpr,
    rows,
    row_labels,
    cols,
    col_labels,
    col_mask,
    alpha,
    beta_on,
    beta_off,
    gamma,
    EXCLUDE: tl.constexpr,
):
    """Positive weight w and denominator weight d of a (rows x cols) tile; SEGMENT 0 class block, 1 batch, 2 queue.
    Columns outside the segment get w = d = 0."""
    if SEGMENT == 0:
        own = row_labels[:, None] == cols[None, :]
        w = tl.where(own, beta_on, beta_off)
        if EXCLUDE:
            d = tl.where(own, 0.0, 1.0)
        else:
            d = tl.where(own, 1.0, 1.0)
    elif SEGMENT == 1:
        other = rows[:, None] != cols[None, :]
        same = (row_labels[:, None] == col_labels[None, :]) & other
        w = tl.where(same, alpha, 0.0)
        d = tl.where(other, gamma, 0.0)
    else:
        same = row_labels[:, None] == col_labels[None, :]
        w = tl.where(same, alpha, 0.0)
        d = tl.where(same, gamma, gamma)
    w = tl.where(col_mask[None, :], w, 0.0)
    d = tl.where(col_mask[None, :], d, 0.0)
    return w, d


@triton.jit
def _segment_logits(
    SEGMENT: tl.constexpr,
    FROM_LOGITS: tl.constexpr,
    anchors,
    rows,
    row_mask,
    cols,
    col_mask,
    x_ptr,
    stride_x,
    s_ptr,
    stride_s,
    bias_ptr,
    scale,
    offs_d,
    D,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Logits of a (rows x cols) tile of one segment: given class logits S, or anchors . X^T; then bias and scale."""
    if FROM_LOGITS:
        l = tl.load(
            s_ptr + rows[:, None] * stride_s + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0.0
        ).to(tl.float32)
    else:
        x = _load_rows(x_ptr, cols, col_mask, stride_x, offs_d, D, UPCAST)
        l = tl.dot(anchors, tl.trans(x), input_precision=PRECISION)
    if HAS_BIAS:
        l = l + tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return l * scale


# fmt: off
@triton.jit
def _column_tile(SEGMENT: tl.constexpr, anchors, rows, row_mask, row_labels, cols, col_mask,
                 feat_ptr, label_ptr, queue_ptr, queue_label_ptr, logits_ptr, centers_ptr, bias_ptr,
                 stride_f, stride_q, stride_s, stride_w, t_scale, c_scale, alpha, beta_on, beta_off, gamma,
                 offs_d, D, FROM_LOGITS: tl.constexpr, HAS_BIAS: tl.constexpr, EXCLUDE: tl.constexpr,
                 UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Logits l and weights (w, d) of a (rows x cols) tile of segment SEGMENT (0 class block, 1 batch, 2 queue):
    the one place the kernels that sweep anchors over columns turn a tile of columns into numbers."""
    if SEGMENT == 0:
        l = _segment_logits(0, FROM_LOGITS, anchors, rows, row_mask, cols, col_mask, centers_ptr, stride_w,
                            logits_ptr, stride_s, bias_ptr, c_scale, offs_d, D, HAS_BIAS, UPCAST, PRECISION)
        col_labels = cols
    elif SEGMENT == 1:
        l = _segment_logits(1, False, anchors, rows, row_mask, cols, col_mask, feat_ptr, stride_f,
                            logits_ptr, stride_s, bias_ptr, t_scale, offs_d, D, False, UPCAST, PRECISION)
        col_labels = tl.load(label_ptr + cols, mask=col_mask, other=-1)
    else:
        l = _segment_logits(2, False, anchors, rows, row_mask, cols, col_mask, queue_ptr, stride_q,
                            logits_ptr, stride_s, bias_ptr, t_scale, offs_d, D, False, UPCAST, PRECISION)
        col_labels = tl.load(queue_label_ptr + cols, mask=col_mask, other=-1)
    w, d = _segment_weights(SEGMENT, rows, row_labels, cols, col_labels, col_mask, alpha, beta_on, beta_off,
                            gamma, EXCLUDE)
    return l, w, d
# fmt: on


@triton.jit
def _paco_fwd_kernel(
    # data pointers
    feat_ptr,
    label_ptr,  # (N, D), (N,)
    queue_ptr,
    queue_label_ptr,  # (K, D), (K,)
    logits_ptr,
    centers_ptr,
    bias_ptr,  # (A, C) class logits S, (C, D) centers W, (C,) log prior
    part_ptr,  # (4, SPLITS, A) float32 out: m, z, sum w l, P of each split
    # shapes and strides
    A,
    N,
    K,
    C,
    D,
    cols_per_split,
    stride_f,
    stride_q,
    stride_s,
    stride_w,
    # constants
    t_scale,
    c_scale,
    alpha,
    beta_on,
    beta_off,
    gamma,
    HAS_CLASSES: tl.constexpr,
    FROM_LOGITS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EXCLUDE: tl.constexpr,
    HAS_BATCH: tl.constexpr,
    HAS_QUEUE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid (cdiv(A, BLOCK_M), SPLITS). One program: BLOCK_M anchors against the columns
    [pid_s * cols_per_split, (pid_s + 1) * cols_per_split) of [class block | batch | queue], streamed in tiles of
    BLOCK_N with an online max. Saves per anchor and split: m, z = sum d exp(l - m), sum w l and P = sum w."""
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    num_splits = tl.num_programs(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < A
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    anchors = _load_rows(feat_ptr, rows, row_mask, stride_f, offs_d, D, UPCAST)
    row_labels = tl.load(label_ptr + rows, mask=row_mask, other=-1)
    c_start = pid_s * cols_per_split
    c_end = c_start + cols_per_split

    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    z = tl.zeros((BLOCK_M,), tl.float32)
    wl = tl.zeros((BLOCK_M,), tl.float32)
    pos = tl.zeros((BLOCK_M,), tl.float32)
    offset = 0
    for seg in tl.static_range(3):
        present = (seg == 0 and HAS_CLASSES) or (seg == 1 and HAS_BATCH) or (seg == 2 and HAS_QUEUE)
        if present:
            size = C if seg == 0 else (N if seg == 1 else K)
            lo = tl.maximum(c_start - offset, 0)
            hi = tl.minimum(c_end - offset, size)
            for c0 in range(lo, hi, BLOCK_N):
                cols = c0 + offs_n
                col_mask = cols < hi
                # fmt: off
                l, w, d = _column_tile(
                    seg, anchors, rows, row_mask, row_labels, cols, col_mask,
                    feat_ptr, label_ptr, queue_ptr, queue_label_ptr, logits_ptr, centers_ptr, bias_ptr,
                    stride_f, stride_q, stride_s, stride_w, t_scale, c_scale, alpha, beta_on, beta_off, gamma,
                    offs_d, D, FROM_LOGITS, HAS_BIAS, EXCLUDE, UPCAST, PRECISION,
                )
                # fmt: on
                l_max = tl.max(tl.where(col_mask[None, :], l, float("-inf")), axis=1)
                m_new = tl.maximum(m, l_max)
                z = z * tl.exp(m - m_new) + tl.sum(d * tl.exp(l - m_new[:, None]), axis=1)
                wl += tl.sum(w * l, axis=1)
                pos += tl.sum(w, axis=1)
                m = m_new
            offset += size

    out = part_ptr + pid_s * A + rows
    stride_part = num_splits * A
    tl.store(out, m, mask=row_mask)
    tl.store(out + stride_part, z, mask=row_mask)
    tl.store(out + 2 * stride_part, wl, mask=row_mask)
    tl.store(out + 3 * stride_part, pos, mask=row_mask)


@triton.jit
def _paco_bwd_rows_kernel(
    # data pointers
    feat_ptr,
    label_ptr,
    queue_ptr,
    queue_label_ptr,
    logits_ptr,
    centers_ptr,
    bias_ptr,
    lse_ptr,
    coef_ptr,
    coef_pos_ptr,  # (A,) each: lse, a = g (-t/tb) [valid], a / P
    grad_anchor_ptr,
    grad_logits_ptr,  # (SPLITS, A, D) float32 out: each split's part of dAnchors, (A, C) out
    # shapes and strides
    A,
    N,
    K,
    C,
    D,
    cols_per_split,
    stride_f,
    stride_q,
    stride_s,
    stride_w,
    stride_ga,
    stride_gs,
    # constants
    t_scale,
    c_scale,
    alpha,
    beta_on,
    beta_off,
    gamma,
    HAS_CLASSES: tl.constexpr,
    FROM_LOGITS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EXCLUDE: tl.constexpr,
    HAS_BATCH: tl.constexpr,
    HAS_QUEUE: tl.constexpr,
    NEED_LOGITS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid (cdiv(A, BLOCK_M), SPLITS), the forward's split of the columns. One program: BLOCK_M anchors against
    the columns [pid_s * cols_per_split, (pid_s + 1) * cols_per_split); recomputes each tile's logits, forms
    G = (a w / P - a d exp(l - lse)) * scale, accumulates its split's part of dAnchors = sum G X over batch, queue
    and centers, and writes dS = G for given class logits (disjoint columns). Saves nothing; the launcher sums the
    splits' parts in a fixed order."""
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    c_start = pid_s * cols_per_split
    c_end = c_start + cols_per_split
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < A
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    anchors = _load_rows(feat_ptr, rows, row_mask, stride_f, offs_d, D, UPCAST)
    row_labels = tl.load(label_ptr + rows, mask=row_mask, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    coef = tl.load(coef_ptr + rows, mask=row_mask, other=0.0)
    coef_pos = tl.load(coef_pos_ptr + rows, mask=row_mask, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    offset = 0
    for seg in tl.static_range(3):
        present = (seg == 0 and HAS_CLASSES) or (seg == 1 and HAS_BATCH) or (seg == 2 and HAS_QUEUE)
        if present:
            size = C if seg == 0 else (N if seg == 1 else K)
            scale = c_scale if seg == 0 else t_scale
            lo = tl.maximum(c_start - offset, 0)
            hi = tl.minimum(c_end - offset, size)
            for c0 in range(lo, hi, BLOCK_N):
                cols = c0 + offs_n
                col_mask = cols < hi
                # fmt: off
                l, w, d = _column_tile(
                    seg, anchors, rows, row_mask, row_labels, cols, col_mask,
                    feat_ptr, label_ptr, queue_ptr, queue_label_ptr, logits_ptr, centers_ptr, bias_ptr,
                    stride_f, stride_q, stride_s, stride_w, t_scale, c_scale, alpha, beta_on, beta_off, gamma,
                    offs_d, D, FROM_LOGITS, HAS_BIAS, EXCLUDE, UPCAST, PRECISION,
                )
                # fmt: on
                if seg == 0:
                    x_ptr, stride_x = centers_ptr, stride_w
                elif seg == 1:
                    x_ptr, stride_x = feat_ptr, stride_f
                else:
                    x_ptr, stride_x = queue_ptr, stride_q
                g = (coef_pos[:, None] * w - coef[:, None] * d * tl.exp(l - lse[:, None])) * scale
                if seg == 0 and FROM_LOGITS:
                    if NEED_LOGITS:
                        tl.store(
                            grad_logits_ptr + rows[:, None] * stride_gs + cols[None, :],
                            g.to(grad_logits_ptr.dtype.element_ty),
                            mask=row_mask[:, None] & col_mask[None, :],
                        )
                else:
                    x = _load_rows(x_ptr, cols, col_mask, stride_x, offs_d, D, UPCAST)
                    acc += tl.dot(g.to(x.dtype), x, input_precision=PRECISION)
            offset += size
    tl.store(
        grad_anchor_ptr + pid_s * A * stride_ga + rows[:, None] * stride_ga + offs_d[None, :],
        acc,
        mask=row_mask[:, None] & (offs_d[None, :] < D),
    )


@triton.jit
def _paco_bwd_cols_kernel(
    # data pointers
    feat_ptr,
    label_ptr,
    cols_ptr,
    bias_ptr,  # anchors (features), their labels, the column rows X, class bias
    lse_ptr,
    coef_ptr,
    coef_pos_ptr,  # (A,) each
    grad_cols_ptr,  # (ncols, D) float32 out
    # shapes and strides
    A,
    NCOLS,
    D,
    stride_f,
    stride_x,
    stride_g,
    # constants
    scale,
    alpha,
    beta_on,
    beta_off,
    gamma,
    SEGMENT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EXCLUDE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid (cdiv(NCOLS, BLOCK_N),). One program: BLOCK_N contrast columns of one segment (SEGMENT 1: batch rows of
    features, 0: centers W) against every anchor; recomputes the logits, forms G and accumulates
    dX = sum_i G[i, col] A[i]. Each program owns its output rows: no atomics. Saves nothing."""
    pid_n = tl.program_id(0)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < NCOLS
    offs_d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)
    if SEGMENT == 1:
        col_labels = tl.load(label_ptr + cols, mask=col_mask, other=-1)
    else:
        col_labels = cols
    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for r0 in range(0, A, BLOCK_M):
        rows = r0 + offs_m
        row_mask = rows < A
        anchors = _load_rows(feat_ptr, rows, row_mask, stride_f, offs_d, D, UPCAST)
        row_labels = tl.load(label_ptr + rows, mask=row_mask, other=-1)
        lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
        coef = tl.load(coef_ptr + rows, mask=row_mask, other=0.0)
        coef_pos = tl.load(coef_pos_ptr + rows, mask=row_mask, other=0.0)
        # Reloaded per row tile (it stays in L1/L2) rather than held: holding it spills registers for float32.
        x = _load_rows(cols_ptr, cols, col_mask, stride_x, offs_d, D, UPCAST)
        l = tl.dot(anchors, tl.trans(x), input_precision=PRECISION)
        if HAS_BIAS:
            l = l + tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        l = l * scale
        w, d = _segment_weights(
            SEGMENT, rows, row_labels, cols, col_labels, col_mask, alpha, beta_on, beta_off, gamma, EXCLUDE
        )
        g = (coef_pos[:, None] * w - coef[:, None] * d * tl.exp(l - lse[:, None])) * scale
        g = tl.where(row_mask[:, None], g, 0.0)
        acc += tl.dot(tl.trans(g.to(anchors.dtype)), anchors, input_precision=PRECISION)
    tl.store(
        grad_cols_ptr + cols[:, None] * stride_g + offs_d[None, :], acc, mask=col_mask[:, None] & (offs_d[None, :] < D)
    )


# ----------------------------------------------------------------------------------------------------------------
# Launchers


def _block_d(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def config(kind: str, dtype: torch.dtype) -> dict:
    return CONFIGS[(kind, "fp32" if dtype == torch.float32 else "half")]


def _launch(conf: dict) -> dict:
    return dict(num_warps=conf["num_warps"], num_stages=conf["num_stages"])


def _precision(dtype: torch.dtype) -> str:
    # TF32 only where torch allows it for float32 matmuls; half inputs use their own tensor-core path.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _common(x, cfg):
    """Launch arguments every kernel derives from the op's inputs."""
    num_classes = x.num_classes
    off = cfg.label_smoothing / (num_classes - 1) if num_classes > 1 else 0.0
    return dict(
        alpha=cfg.alpha,
        beta_on=cfg.beta * (1.0 - cfg.label_smoothing),
        beta_off=cfg.beta * off,
        gamma=cfg.gamma,
        t_scale=1.0 / cfg.temperature,
        c_scale=1.0 / cfg.center_temperature,
    )


def _column_split(num_anchors: int, total_cols: int, block_m: int, block_n: int) -> int:
    """Columns per split: all of them unless the anchor blocks alone cannot fill the GPU (few anchors, a long
    queue), then enough splits to reach SPLIT_TARGET_PROGRAMS, each at least 4 column tiles long (shorter ones would
    spend more on writing and merging their partial results than on their columns)."""
    row_programs = triton.cdiv(num_anchors, block_m)
    if row_programs >= SPLIT_TARGET_PROGRAMS:
        return max(total_cols, 1)
    splits = min(triton.cdiv(SPLIT_TARGET_PROGRAMS, row_programs), max(1, total_cols // (4 * block_n)))
    return triton.cdiv(max(total_cols, 1), splits * block_n) * block_n


def _split_grid(conf: dict, num_anchors: int, total_cols: int, cols_per_split=None):
    """(grid, cols_per_split, splits) of a row kernel that may split the columns; cols_per_split overrides."""
    cols_per_split = cols_per_split or FORCE_COLS_PER_SPLIT
    if cols_per_split is None:
        cols_per_split = _column_split(num_anchors, total_cols, conf["BLOCK_M"], conf["BLOCK_N"])
    splits = triton.cdiv(max(total_cols, 1), cols_per_split)
    return (triton.cdiv(num_anchors, conf["BLOCK_M"]), splits), cols_per_split, splits


def _tiles(conf: dict, block_d: int, dtype: torch.dtype) -> dict:
    """Tile constants and launch options of one kernel launch."""
    return dict(
        BLOCK_M=conf["BLOCK_M"],
        BLOCK_N=conf["BLOCK_N"],
        BLOCK_D=block_d,
        UPCAST=INTERPRET,
        PRECISION=_precision(dtype),
        num_warps=conf["num_warps"],
        num_stages=conf["num_stages"],
    )


def _operands(x, cfg):
    """Contiguous operands; absent ones are replaced by features (never read: their constexpr flag is off)."""
    feats = x.features.contiguous()
    K = 0 if x.queue is None else x.queue.shape[0]
    return dict(
        feats=feats,
        queue=x.queue.contiguous() if K else feats,
        queue_labels=x.queue_labels if K else x.labels,
        logits=x.center_logits.contiguous() if x.center_logits is not None else feats,
        centers=x.centers.contiguous() if x.centers is not None else feats,
        bias=x.center_bias if x.center_bias is not None else feats,
        A=cfg.num_anchors,
        N=feats.shape[0] if cfg.batch_columns else 0,
        K=K,
        C=x.num_classes,
        D=feats.shape[1],
    )


def paco_fwd(x, cfg, cols_per_split=None):
    """Per-anchor loss, lse and P (float32, each (A,)). cols_per_split overrides the split heuristic."""
    o = _operands(x, cfg)
    A, total = o["A"], o["C"] + o["N"] + o["K"]
    conf = config("fwd", o["feats"].dtype)
    grid, cols_per_split, splits = _split_grid(conf, A, total, cols_per_split)
    part = torch.empty((4, splits, A), device=o["feats"].device, dtype=torch.float32)
    # fmt: off
    _paco_fwd_kernel[grid](
        # data pointers
        o["feats"], x.labels, o["queue"], o["queue_labels"], o["logits"], o["centers"], o["bias"], part,
        # shapes and strides
        A, o["N"], o["K"], o["C"], o["D"], cols_per_split,
        o["feats"].stride(0), o["queue"].stride(0), o["logits"].stride(0), o["centers"].stride(0),
        # constants
        **_common(x, cfg),
        HAS_CLASSES=o["C"] > 0, FROM_LOGITS=x.center_logits is not None, HAS_BIAS=x.center_bias is not None,
        EXCLUDE=cfg.exclude_positive_class, HAS_BATCH=o["N"] > 0, HAS_QUEUE=o["K"] > 0,
        **_tiles(conf, _block_d(o["D"]), o["feats"].dtype),
    )
    # fmt: on
    return _merge_splits(part, x, cfg)


def _merge_splits(part, x, cfg):
    """Exact merge of the splits' partial sums (kernels.md), then the loss of each anchor."""
    m_s, z_s, wl_s, pos_s = part
    m = m_s.max(dim=0).values
    z = (z_s * torch.exp(m_s - m)).sum(dim=0)
    wl, pos = wl_s.sum(dim=0), pos_s.sum(dim=0)
    lse = m + torch.log(z + cfg.lse_eps)
    valid = (pos > 0) & (x.labels[: cfg.num_anchors] != cfg.ignore_index)
    loss = cfg.loss_scale * (wl - pos * lse) / torch.where(valid, pos, torch.ones_like(pos))
    return torch.where(valid, loss, torch.zeros_like(loss)), lse, pos


def paco_bwd(x, cfg, lse, pos, grad_loss, need_features, need_logits, need_centers):
    """Gradients (features, center_logits, centers), float32, each None when not needed."""
    o = _operands(x, cfg)
    feats, A, D = o["feats"], o["A"], o["D"]
    valid = (pos > 0) & (x.labels[:A] != cfg.ignore_index)
    coef = torch.where(valid, grad_loss.float() * cfg.loss_scale, torch.zeros_like(pos))
    coef_pos = torch.where(valid, coef / torch.where(valid, pos, torch.ones_like(pos)), torch.zeros_like(pos))
    common, block_d = _common(x, cfg), _block_d(D)
    rows_conf, cols_conf = config("bwd_rows", feats.dtype), config("bwd_cols", feats.dtype)
    # Few anchors against many columns: split the columns as the forward does; each split writes its own part of
    # dAnchors (bounded by SPLIT_TARGET_PROGRAMS x BLOCK_M rows), summed below in a fixed order (deterministic).
    grid, cols_per_split, splits = _split_grid(rows_conf, A, o["C"] + o["N"] + o["K"])
    anchor_parts = torch.empty((splits, A, D), device=feats.device, dtype=torch.float32)
    grad_logits = torch.empty_like(o["logits"]) if need_logits else o["logits"]
    # fmt: off
    _paco_bwd_rows_kernel[grid](
        # data pointers
        feats, x.labels, o["queue"], o["queue_labels"], o["logits"], o["centers"], o["bias"],
        lse, coef, coef_pos,
        anchor_parts, grad_logits,
        # shapes and strides
        A, o["N"], o["K"], o["C"], D, cols_per_split,
        feats.stride(0), o["queue"].stride(0), o["logits"].stride(0), o["centers"].stride(0),
        anchor_parts.stride(1), grad_logits.stride(0),
        # constants
        **common,
        HAS_CLASSES=o["C"] > 0, FROM_LOGITS=x.center_logits is not None, HAS_BIAS=x.center_bias is not None,
        EXCLUDE=cfg.exclude_positive_class, HAS_BATCH=o["N"] > 0, HAS_QUEUE=o["K"] > 0, NEED_LOGITS=need_logits,
        **_tiles(rows_conf, block_d, feats.dtype),
    )

    def columns(segment, matrix, scale, with_bias):
        out = torch.empty((matrix.shape[0], D), device=feats.device, dtype=torch.float32)
        _paco_bwd_cols_kernel[(triton.cdiv(matrix.shape[0], cols_conf["BLOCK_N"]),)](
            # data pointers
            feats, x.labels, matrix, o["bias"], lse, coef, coef_pos, out,
            # shapes and strides
            A, matrix.shape[0], D, feats.stride(0), matrix.stride(0), out.stride(0),
            # constants
            scale, common["alpha"], common["beta_on"], common["beta_off"], common["gamma"],
            SEGMENT=segment, HAS_BIAS=with_bias, EXCLUDE=cfg.exclude_positive_class,
            **_tiles(cols_conf, block_d, feats.dtype),
        )
        return out
    # fmt: on

    grad_anchors = anchor_parts[0] if splits == 1 else anchor_parts.sum(dim=0)
    grad_features = None
    if need_features:
        if o["N"]:
            grad_features = columns(1, feats, common["t_scale"], False)
        else:
            grad_features = torch.zeros(feats.shape, device=feats.device, dtype=torch.float32)
        grad_features[:A] += grad_anchors
    grad_centers = columns(0, o["centers"], common["c_scale"], x.center_bias is not None) if need_centers else None
    return grad_features, grad_logits if need_logits else None, grad_centers
