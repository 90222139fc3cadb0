"""_paco_bwd_cols_kernel: the column-parallel backward, dContrast of batch columns and dW of centers.

Grid (cdiv(NCOLS, BLOCK_N),). One program: BLOCK_N contrast columns of one segment (SEGMENT 1: batch rows of
features, 0: centers W) against every anchor; forms each anchor tile's (a, 1/P) from the op's upstream gradient
(tiles.anchor_coefficients), recomputes the logits (rows normalized as loaded with NORMALIZE), forms a' H with
H = w / P - d exp(l - lse) and a' = a / max|a| (so |a' H| <= 1 whatever the reduction: it is rounded to the input
dtype for the product), and accumulates dX = sum_i max|a| a'_i H[i, col] A[i] / temperature. With 'none' max|a| is
taken per anchor tile and applied to each tile's float32 product; with 'sum' or 'mean' every anchor with a loss has
the same |a|, so the products accumulate in place and it is applied once. Each program owns its output rows
(atomics only for ANCHOR_GRAD, below). With FINISH (centers:
their rows take no other gradient) it also chains the gradient through the normalization (NORMALIZE) and stores the
input's dtype; without (batch columns, whose first A rows are also anchors) it stores float32 and
_paco_epilogue_kernel adds dAnchors and finishes. Saves nothing.

With LABEL_SUMS (batch columns, as in the forward) the column tile is held across the anchor loop, a tile forms only
H = -gamma exp(l - lse), and only the anchor tiles the diagonal crosses mask the own column; the positive part w / P
is added per row by _paco_epilogue_kernel, from per-label sums. With ANCHOR_GRAD (LABEL_SUMS, batch columns: the
one-pass backward, launched as paco_bwd_one_pass._paco_bwd_one_pass_kernel) each tile's H also gives its part of
dAnchors, H X, added to grad_anchor_ptr by float32 atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .configs import autotune
from .tiles import (
    G_SCALE,
    G_SCALE_LOG2,
    LOG2E,
    anchor_coefficients,
    as_f32,
    column_scale,
    diagonal_tiles,
    gradient_factor,
    inverse_norm,
    load_rows,
    normalize_backward,
    rows_descriptor,
    sample_logits,
    segment_weights,
    sweep_rows,
    uniform_lse2,
)


@autotune("bwd_cols")
@triton.jit
def _paco_bwd_cols_kernel(
    # data pointers
    feat_ptr, label_ptr,  # anchors (the first A rows of features) and their labels; labels of batch columns
    cols_ptr, bias_ptr,  # (NCOLS, D) the column rows X (features or centers), (C,) float32 class bias
    lse_ptr, pos_ptr,  # (A,) float32 each, saved by the forward
    grad_ptr, counted_ptr,  # the op's upstream gradient ((A,) or ()), (1,) float32 counted anchors
    grad_cols_ptr,  # (NCOLS, D) out: with FINISH the finished gradient of those rows in their dtype, else float32
    grad_anchor_ptr,  # (A, D) float32, zeros on entry: with ANCHOR_GRAD these columns' part of dAnchors added in
    # shapes and strides
    A, NCOLS, D, stride_f, stride_x, stride_g,
    rows_bucket, cols_bucket,  # autotune key only
    # constants
    scale, alpha, beta_on, beta_off, gamma, loss_scale, ignore_index,
    SEGMENT: tl.constexpr, HAS_BIAS: tl.constexpr, EXCLUDE: tl.constexpr, NORMALIZE: tl.constexpr,
    REDUCTION: tl.constexpr, FINISH: tl.constexpr, LABEL_SUMS: tl.constexpr, ANCHOR_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    tl.static_assert(not ANCHOR_GRAD or ((LABEL_SUMS and SEGMENT == 1) and REDUCTION != 0),
                     "ANCHOR_GRAD: batch columns, label sums, 'sum' or 'mean'")  # fmt: skip
    # float arguments arrive as fp64 from torch.compile (see tiles.as_f32)
    scale = as_f32(scale)
    alpha = as_f32(alpha)
    beta_on = as_f32(beta_on)
    beta_off = as_f32(beta_off)
    gamma = as_f32(gamma)
    loss_scale = as_f32(loss_scale)
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
    uniform_coef = 1.0
    if REDUCTION != 0:  # |a| of every anchor with a loss: the upstream gradient times -(t / tb) (over the counted)
        uniform_coef = tl.abs(tl.load(grad_ptr).to(tl.float32) * loss_scale)
        if REDUCTION == 2:
            uniform_coef = uniform_coef / tl.maximum(tl.load(counted_ptr), 1.0)
        uniform_coef = tl.maximum(uniform_coef, 1.1754943508222875e-38)
    if LABEL_SUMS:  # the column tile and its scale, held across the anchor loop (the tiles carry no labels)
        held = load_rows(cols_ptr, cols, col_mask, stride_x, offs_d, D, UPCAST)
        held_scale = column_scale(held, scale * LOG2E, BLOCK_N, NORMALIZE)  # base-2 logits (tiles.sample_tile)
        # ANCHOR_GRAD ('sum'/'mean': one a): dAnchors_i += -a (t / G_SCALE) sum_j (p_ij G_SCALE) u_j, the sweep's
        # tile of p G_SCALE against the held columns' unit rows u_j; `anchor_factor` = -a t / G_SCALE, a = sign |a|.
        # With NORMALIZE u_j = x_j / |x_j|: p's columns are scaled by |x_j|^-1 / max_j |x_j|^-1 (<= 1, 0 on padded
        # columns) and the max goes into anchor_factor, so p G_SCALE <= 2^15 stays in float16's range (times an
        # inverse norm it would not, and the padding's 1e12 times its zero rows would be NaN).
        held_ratio = tl.where(col_mask, column_scale(held, 1.0, BLOCK_N, NORMALIZE), 0.0)
        anchor_factor = 0.0
        if ANCHOR_GRAD:
            anchor_factor = tl.where(tl.load(grad_ptr).to(tl.float32) * loss_scale < 0, 1.0, -1.0) * uniform_coef
            anchor_factor = anchor_factor * (scale / G_SCALE)
            if NORMALIZE:
                norm_max = tl.maximum(tl.max(held_ratio, axis=0), 1.1754943508222875e-38)
                held_ratio = held_ratio / norm_max
                anchor_factor = anchor_factor * norm_max
    if LABEL_SUMS:  # full tiles without masks, the anchor tiles the diagonal crosses, then the last partial tile
        full_end = (A // BLOCK_M) * BLOCK_M
        anchors_desc = rows_descriptor(feat_ptr, A, D, stride_f, BLOCK_M, BLOCK_D, TMA)
        first, last = diagonal_tiles(0, full_end, pid_n * BLOCK_N, BLOCK_N, BLOCK_M)
        # fmt: off
        acc = _sample_sweep(acc, 0, first, cols, held, held_scale, feat_ptr, anchors_desc, label_ptr,
                            lse_ptr, pos_ptr, grad_ptr, counted_ptr, A, D, stride_f, offs_m, offs_d, gamma, loss_scale,
                            ignore_index, uniform_coef, grad_anchor_ptr, anchor_factor, held_ratio, BLOCK_M, REDUCTION,
                            UPCAST, PRECISION, NORMALIZE, False, True, ANCHOR_GRAD, TMA)
        acc = _sample_sweep(acc, first, last, cols, held, held_scale, feat_ptr, anchors_desc, label_ptr,
                            lse_ptr, pos_ptr, grad_ptr, counted_ptr, A, D, stride_f, offs_m, offs_d, gamma, loss_scale,
                            ignore_index, uniform_coef, grad_anchor_ptr, anchor_factor, held_ratio, BLOCK_M, REDUCTION,
                            UPCAST, PRECISION, NORMALIZE, True, True, ANCHOR_GRAD, TMA)
        acc = _sample_sweep(acc, last, full_end, cols, held, held_scale, feat_ptr, anchors_desc, label_ptr,
                            lse_ptr, pos_ptr, grad_ptr, counted_ptr, A, D, stride_f, offs_m, offs_d, gamma, loss_scale,
                            ignore_index, uniform_coef, grad_anchor_ptr, anchor_factor, held_ratio, BLOCK_M, REDUCTION,
                            UPCAST, PRECISION, NORMALIZE, False, True, ANCHOR_GRAD, TMA)
        acc = _sample_sweep(acc, full_end, A, cols, held, held_scale, feat_ptr, anchors_desc, label_ptr,
                            lse_ptr, pos_ptr, grad_ptr, counted_ptr, A, D, stride_f, offs_m, offs_d, gamma, loss_scale,
                            ignore_index, uniform_coef, grad_anchor_ptr, anchor_factor, held_ratio, BLOCK_M, REDUCTION,
                            UPCAST, PRECISION, NORMALIZE, True, False, ANCHOR_GRAD, TMA)
        # fmt: on
        if REDUCTION != 0:  # the sweeps summed p A over the anchors with a loss; H a = -p a, a = sign |a|
            acc = acc * tl.where(tl.load(grad_ptr).to(tl.float32) * loss_scale < 0, 1.0, -1.0)
    else:
        for r0 in range(0, A, BLOCK_M):
            rows, row_mask, anchors, row_labels, lse, coef, inv_pos, coef_max = _anchor_tile(
                r0, feat_ptr, feat_ptr, label_ptr, lse_ptr, pos_ptr, grad_ptr, counted_ptr, A, D, stride_f, offs_m,
                offs_d, loss_scale, ignore_index, uniform_coef, REDUCTION, UPCAST, NORMALIZE, False, False,
            )  # fmt: skip
            # Reloaded per row tile (it stays in L1/L2) rather than held: holding it spilled registers for float32.
            x = load_rows(cols_ptr, cols, col_mask, stride_x, offs_d, D, UPCAST)
            l = tl.dot(anchors, tl.trans(x), input_precision=PRECISION)
            if NORMALIZE:  # as tiles.segment_logits: the columns' inverse norms scale the products
                xf = x.to(tl.float32)
                l = l * inverse_norm(tl.sum(xf * xf, axis=1))[None, :]
            if HAS_BIAS:
                l = l + tl.load(bias_ptr + cols, mask=col_mask, other=0.0)[None, :]
            l = tl.where(col_mask[None, :], l * scale, float("-inf"))
            w, d = segment_weights(
                SEGMENT, rows, row_labels, cols, col_labels, col_mask, alpha, beta_on, beta_off, gamma, EXCLUDE
            )
            h = gradient_factor(l, w, d, lse, inv_pos) * (coef / coef_max)[:, None]
            h = tl.where(row_mask[:, None], h, 0.0)
            acc = _accumulate(acc, h, anchors, coef_max, REDUCTION, PRECISION)
    acc = acc * (scale / G_SCALE)
    if REDUCTION != 0:
        acc = acc * uniform_coef
    if FINISH and NORMALIZE:  # centers: these rows take no other gradient, finished here
        acc = normalize_backward(acc, cols_ptr, cols, col_mask, stride_x, offs_d, D)
    out = grad_cols_ptr + cols.to(tl.int64)[:, None] * stride_g + offs_d[None, :]
    tl.store(out, acc.to(grad_cols_ptr.dtype.element_ty), mask=col_mask[:, None] & (offs_d[None, :] < D))


@triton.jit
def _anchor_tile(
    r0, feat_ptr, anchors_desc, label_ptr, lse_ptr, pos_ptr, grad_ptr, counted_ptr, A, D, stride_f, offs_m, offs_d,
    loss_scale, ignore_index, uniform_coef, REDUCTION: tl.constexpr, UPCAST: tl.constexpr, NORMALIZE: tl.constexpr,
    ROWS_IN_RANGE: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """What the column kernel needs of the anchor tile at r0: rows, mask, the (normalized) anchors, labels, lse,
    (a, 1/P), and the scale a is divided by before its product (per tile with one a per anchor, else uniform_coef).
    The anchors by tiles.sweep_rows: by the descriptor anchors_desc with TMA, else by pointers (ROWS_IN_RANGE: the
    tile is full, rows < A, so they load without a row mask)."""
    rows = r0 + offs_m
    row_mask = rows < A
    anchors = sweep_rows(feat_ptr, anchors_desc, r0, A, offs_m, stride_f, offs_d, D, UPCAST, NORMALIZE, ROWS_IN_RANGE,
                         TMA)  # fmt: skip
    row_labels = tl.load(label_ptr + rows, mask=row_mask, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    coef, inv_pos = anchor_coefficients(
        grad_ptr, counted_ptr, pos_ptr, rows, row_mask, row_labels, ignore_index, loss_scale, REDUCTION
    )
    if REDUCTION == 0:  # one a per anchor: scaled per anchor tile
        coef_max = tl.maximum(tl.max(tl.abs(coef), axis=0), 1.1754943508222875e-38)  # float32's smallest normal
    else:  # 'sum' or 'mean': one a for every anchor with a loss, the same scale on every tile (applied after)
        coef_max = uniform_coef
    return rows, row_mask, anchors, row_labels, lse, coef, inv_pos, coef_max


@triton.jit
def _accumulate(acc, h, anchors, coef_max, REDUCTION: tl.constexpr, PRECISION: tl.constexpr):
    """acc + H^T A: H (|H| <= 1) scaled by 2^15 and rounded to the anchors' dtype for the product; with one a per
    anchor the tile's scale is applied to the product, else the product accumulates in place."""
    ha = tl.trans((h * G_SCALE).to(anchors.dtype))
    if REDUCTION == 0:
        return acc + tl.dot(ha, anchors, input_precision=PRECISION) * coef_max
    return tl.dot(ha, anchors, acc, input_precision=PRECISION)


@triton.jit
def _sample_sweep(
    acc, start, end, cols, held, held_scale, feat_ptr, anchors_desc, label_ptr, lse_ptr, pos_ptr, grad_ptr,
    counted_ptr, A, D, stride_f, offs_m, offs_d, gamma, loss_scale, ignore_index, uniform_coef, grad_anchor_ptr,
    anchor_factor, held_ratio, BLOCK_M: tl.constexpr, REDUCTION: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, NORMALIZE: tl.constexpr, MASK_DIAGONAL: tl.constexpr, ROWS_IN_RANGE: tl.constexpr,
    ANCHOR_GRAD: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """The anchor tiles starting in [start, end) against the held batch columns, positives by label sums: H = -gamma
    exp(l - lse) = -exp2(l2 - shift2) (base-2 logits, tiles.uniform_lse2), times a / scale; for 'sum' and 'mean'
    (one a) the sum of p A with G_SCALE in the exponent, its sign -sign(a) applied by the caller. Columns past NCOLS
    need no mask for dColumns (their rows of the output are never stored), but with ANCHOR_GRAD their exponent is
    capped at log2(G_SCALE), which no column in the denominator reaches (p <= 1): a padded column's logit is 0, and
    with a small lse its p G_SCALE passes float16's range, whose inf times the zero held row would be NaN in
    dAnchors (-inf logits there cost more registers than a min). Anchors past A need no mask (loaded as zero rows,
    a = 0: H = 0 there); full tiles (ROWS_IN_RANGE) load the anchors without a row mask. With ANCHOR_GRAD
    ('sum'/'mean') the same tile of p G_SCALE also adds its part of dAnchors (against the held columns, times
    anchor_factor) by float32 atomics: the sum's order varies."""
    for r0 in range(start, end, BLOCK_M):
        rows, row_mask, anchors, row_labels, lse, coef, inv_pos, coef_max = _anchor_tile(
            r0, feat_ptr, anchors_desc, label_ptr, lse_ptr, pos_ptr, grad_ptr, counted_ptr, A, D, stride_f, offs_m,
            offs_d, loss_scale, ignore_index, uniform_coef, REDUCTION, UPCAST, NORMALIZE, ROWS_IN_RANGE, TMA,
        )  # fmt: skip
        l2 = sample_logits(anchors, rows, cols, cols < 0, held, held_scale, PRECISION, False, MASK_DIAGONAL)
        shift2 = uniform_lse2(lse, gamma)
        if REDUCTION == 0:  # one a per anchor, per-tile scale: as the per-tile path
            h = -tl.exp2(l2 - shift2[:, None]) * (coef / coef_max)[:, None]
            acc = _accumulate(acc, h, anchors, coef_max, REDUCTION, PRECISION)
        else:  # one a for every anchor with a loss: p G_SCALE = exp2(l2 - shift2 + log2 G_SCALE) on those, 0 elsewhere
            shift2 = tl.where(coef != 0, shift2 - G_SCALE_LOG2, float("inf"))
            exponent = l2 - shift2[:, None]
            if ANCHOR_GRAD:  # padded columns: capped at log2(G_SCALE), which no real column passes (docstring)
                exponent = tl.minimum(exponent, G_SCALE_LOG2)
            p = tl.exp2(exponent)
            acc = tl.dot(tl.trans(p.to(anchors.dtype)), anchors, acc, input_precision=PRECISION)
            if ANCHOR_GRAD:
                _add_anchor_part(p, held, held_ratio, anchor_factor, grad_anchor_ptr, rows, row_mask, offs_d, D,
                                 PRECISION, NORMALIZE)  # fmt: skip
    return acc


@triton.jit
def _add_anchor_part(
    pg, held, held_ratio, factor, grad_anchor_ptr, rows, row_mask, offs_d, D, PRECISION: tl.constexpr,
    NORMALIZE: tl.constexpr,
):  # fmt: skip
    """dAnchors[rows] += factor (pg u) by float32 atomics: pg a (BLOCK_M x BLOCK_N) tile of p G_SCALE, u the held
    columns' unit rows (with NORMALIZE held_ratio scales pg's columns, and factor holds the largest inverse norm)."""
    if NORMALIZE:
        pg = pg * held_ratio[None, :]
    part = tl.dot(pg.to(held.dtype), held, input_precision=PRECISION) * factor
    out = grad_anchor_ptr + rows.to(tl.int64)[:, None] * D + offs_d[None, :]
    tl.atomic_add(out, part, mask=row_mask[:, None] & (offs_d[None, :] < D), sem="relaxed")
