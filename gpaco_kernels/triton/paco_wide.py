"""The kernels for wide features, D > launch.MAX_DIM (a MoCo v3 head's 256, a CLIP tower's 512-1024): the forward
sweep and the two backward sweeps of paco_fwd, paco_bwd_rows and paco_bwd_cols, with the feature dim tiled.

The other kernels hold a tile of anchors (BLOCK_M x D) across their column loop and the backward a BLOCK x D
float32 accumulator, which past D = 128 no longer fit in registers (the compile report at D 256-1024: hundreds of
bytes spilled per thread). Here:
- every product l = A X^T is a loop over BLOCK_K features at a time (wide_product), the anchors reloaded per chunk
  (from L2: a tile of anchors is read once per column tile, as the columns are);
- each backward program owns BLOCK_D of the output's features, the grid's last axis, and recomputes the logits over
  all of D (its product's cost is paid once per feature block: the price of the accumulator fitting);
- the rows come normalized (launch normalizes a copy when the loss asks for it: O((N + K + C) D) beside the inputs,
  never the anchors x contrast matrix), and the host chains the gradients through the normalization
  (ops/spec.py normalize_backward), so the kernels take plain products;
- labels are compared in each tile (no label sums), tiles are loaded by pointers.
The loss algebra is tiles.py's, as in the other kernels: segment_weights, gradient_factor, online_lse_step,
anchor_coefficients, given_class_tile. The forward writes the same per-split partials as _paco_fwd_kernel, merged by
_paco_finalize_kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .configs import autotune
from .tiles import (
    G_SCALE,
    anchor_coefficients,
    as_f32,
    given_class_tile,
    gradient_factor,
    load_rows,
    lse_tile_step,
    out_of_range,
    segment_weights,
    store_partials,
)


@triton.jit
def wide_product(
    a_ptr, rows, row_mask, stride_a, x_ptr, cols, col_mask, stride_x, D, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """A[rows] . X[cols]^T (float32, BLOCK_M x BLOCK_N) over all D features, BLOCK_K at a time (0 outside)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, D, BLOCK_K):
        a = load_rows(a_ptr, rows, row_mask, stride_a, k0 + offs_k, D, UPCAST)
        x = load_rows(x_ptr, cols, col_mask, stride_x, k0 + offs_k, D, UPCAST)
        acc = tl.dot(a, tl.trans(x), acc, input_precision=PRECISION)
    return acc


@triton.jit
def wide_tile(
    SEGMENT: tl.constexpr, rows, row_mask, row_labels, cols, col_mask, feat_ptr, x_ptr, col_label_ptr, bias_ptr,
    stride_f, stride_x, scale, alpha, beta_on, beta_off, gamma, D, HAS_BIAS: tl.constexpr, EXCLUDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """(l, w, d, column labels) of a (rows x cols) tile of segment SEGMENT (0 class block: x_ptr the centers; 1
    batch, 2 queue: x_ptr the features or the queue, col_label_ptr their labels), as tiles.column_tile gives them:
    the product, the class bias, the scale, -inf on masked columns."""
    l = wide_product(feat_ptr, rows, row_mask, stride_f, x_ptr, cols, col_mask, stride_x, D, BLOCK_M, BLOCK_N, BLOCK_K,
                     UPCAST, PRECISION)  # fmt: skip
    if HAS_BIAS:
        l = l + tl.load(bias_ptr + cols, mask=col_mask, other=0.0)[None, :]
    l = tl.where(col_mask[None, :], l * scale, float("-inf"))
    if SEGMENT == 0:
        col_labels = cols
    else:
        col_labels = tl.load(col_label_ptr + cols, mask=col_mask, other=-1)
    w, d = segment_weights(SEGMENT, rows, row_labels, cols, col_labels, col_mask, alpha, beta_on, beta_off, gamma,
                           EXCLUDE)  # fmt: skip
    return l, w, d, col_labels


@autotune("wide_fwd")
@triton.jit
def _paco_wide_fwd_kernel(
    # data pointers: as _paco_fwd_kernel's, the rows normalized already where the loss normalizes
    feat_ptr, label_ptr, queue_ptr, queue_label_ptr, logits_ptr, centers_ptr, bias_ptr,
    part_ptr,  # (5, SPLITS, A) float32 out: m, z, sum w l, P of each split, and the label-range flag
    # shapes and strides
    A, N, K, C, D, cols_per_split, stride_f, stride_q, stride_s, stride_w,
    rows_bucket, cols_bucket,  # autotune key only
    # constants
    t_scale, c_scale, alpha, beta_on, beta_off, gamma, ignore_index,
    HAS_CLASSES: tl.constexpr, FROM_LOGITS: tl.constexpr, HAS_BIAS: tl.constexpr, EXCLUDE: tl.constexpr,
    HAS_BATCH: tl.constexpr, HAS_QUEUE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(A, BLOCK_M), SPLITS): BLOCK_M anchors against their split's columns, as _paco_fwd_kernel without
    label sums."""
    t_scale = as_f32(t_scale)
    c_scale = as_f32(c_scale)
    alpha = as_f32(alpha)
    beta_on = as_f32(beta_on)
    beta_off = as_f32(beta_off)
    gamma = as_f32(gamma)
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    num_splits = tl.num_programs(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < A
    offs_n = tl.arange(0, BLOCK_N)
    row_labels = tl.load(label_ptr + rows, mask=row_mask, other=-1)
    bad_label = tl.zeros((), tl.int32)
    if HAS_CLASSES:
        bad_label = out_of_range(row_labels, row_mask, C, ignore_index)
    c_start = pid_s * cols_per_split
    c_end = c_start + cols_per_split
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    z = tl.zeros((BLOCK_M,), tl.float32)
    wl = tl.zeros((BLOCK_M,), tl.float32)
    pos = tl.zeros((BLOCK_M,), tl.float32)
    offset = 0
    for seg in tl.static_range(3):
        present = ((seg == 0 and HAS_CLASSES) or (seg == 1 and HAS_BATCH)) or (seg == 2 and HAS_QUEUE)
        size = C if seg == 0 else (N if seg == 1 else K)
        if present:
            lo = tl.maximum(c_start - offset, 0)
            hi = tl.minimum(c_end - offset, size)
            if seg == 0 and FROM_LOGITS:  # given class logits: no product
                for c0 in range(lo, hi, BLOCK_N // 4):  # a quarter as wide, as _paco_fwd_kernel's
                    _, _, l, w, d = given_class_tile(
                        c0, hi, rows, row_mask, row_labels, logits_ptr, stride_s, bias_ptr, c_scale, alpha, beta_on,
                        beta_off, gamma, BLOCK_N // 4, HAS_BIAS, EXCLUDE,
                    )  # fmt: skip
                    m, z, wl, pos = lse_tile_step(m, z, wl, pos, l, w, d)
            else:
                x_ptr = centers_ptr if seg == 0 else (feat_ptr if seg == 1 else queue_ptr)
                col_label_ptr = queue_label_ptr if seg == 2 else label_ptr  # (the class block reads none)
                stride_x = stride_w if seg == 0 else (stride_f if seg == 1 else stride_q)
                scale = c_scale if seg == 0 else t_scale
                for c0 in range(lo, hi, BLOCK_N):
                    cols = c0 + offs_n
                    col_mask = cols < hi
                    l, w, d, col_labels = wide_tile(
                        seg, rows, row_mask, row_labels, cols, col_mask, feat_ptr, x_ptr, col_label_ptr, bias_ptr,
                        stride_f, stride_x, scale, alpha, beta_on, beta_off, gamma, D, HAS_BIAS and seg == 0, EXCLUDE,
                        BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION,
                    )  # fmt: skip
                    if HAS_CLASSES and seg > 0:  # batch and queue labels: every one is read by some program
                        bad_label = tl.maximum(bad_label, out_of_range(col_labels, col_mask, C, ignore_index))
                    m, z, wl, pos = lse_tile_step(m, z, wl, pos, l, w, d)
            offset += size
    store_partials(part_ptr, pid_s, num_splits, A, rows, row_mask, m, z, wl, pos, bad_label)


@autotune("wide_bwd_rows")
@triton.jit
def _paco_wide_bwd_rows_kernel(
    # data pointers: as _paco_bwd_rows_kernel's, the rows normalized already where the loss normalizes
    feat_ptr, label_ptr, queue_ptr, queue_label_ptr, logits_ptr, centers_ptr, bias_ptr,
    lse_ptr, pos_ptr, grad_ptr, counted_ptr,
    grad_anchor_ptr,  # (SPLITS, A, D) float32 out: each split's part of dAnchors (unit rows)
    grad_logits_ptr,  # (A, C) out, dtype of the class logits
    # shapes and strides
    A, N, K, C, D, cols_per_split, stride_f, stride_q, stride_s, stride_w, stride_ga, stride_gs,
    rows_bucket, cols_bucket,  # autotune key only
    # constants
    t_scale, c_scale, alpha, beta_on, beta_off, gamma, loss_scale, ignore_index,
    HAS_CLASSES: tl.constexpr, FROM_LOGITS: tl.constexpr, HAS_BIAS: tl.constexpr, EXCLUDE: tl.constexpr,
    HAS_BATCH: tl.constexpr, HAS_QUEUE: tl.constexpr, REDUCTION: tl.constexpr, NEED_LOGITS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(A, BLOCK_M), SPLITS, cdiv(D, BLOCK_D)): the features [pid_d BLOCK_D, (pid_d + 1) BLOCK_D) of BLOCK_M
    anchors' part of dAnchors from their split's columns, as _paco_bwd_rows_kernel without label sums; dS (given
    class logits) by the programs of the first feature block."""
    t_scale = as_f32(t_scale)
    c_scale = as_f32(c_scale)
    alpha = as_f32(alpha)
    beta_on = as_f32(beta_on)
    beta_off = as_f32(beta_off)
    gamma = as_f32(gamma)
    loss_scale = as_f32(loss_scale)
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_d = tl.program_id(2)
    c_start = pid_s * cols_per_split
    c_end = c_start + cols_per_split
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < A
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    row_labels = tl.load(label_ptr + rows, mask=row_mask, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    coef, inv_pos = anchor_coefficients(
        grad_ptr, counted_ptr, pos_ptr, rows, row_mask, row_labels, ignore_index, loss_scale, REDUCTION
    )
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    offset = 0
    for seg in tl.static_range(3):
        present = ((seg == 0 and HAS_CLASSES) or (seg == 1 and HAS_BATCH)) or (seg == 2 and HAS_QUEUE)
        size = C if seg == 0 else (N if seg == 1 else K)
        if present:
            lo = tl.maximum(c_start - offset, 0)
            hi = tl.minimum(c_end - offset, size)
            if seg == 0 and FROM_LOGITS:  # dS = a H / tc, elementwise; nothing into dAnchors
                if NEED_LOGITS and pid_d == 0:
                    for c0 in range(lo, hi, BLOCK_N // 4):
                        cols, col_mask, l, w, d = given_class_tile(
                            c0, hi, rows, row_mask, row_labels, logits_ptr, stride_s, bias_ptr, c_scale, alpha,
                            beta_on, beta_off, gamma, BLOCK_N // 4, HAS_BIAS, EXCLUDE,
                        )  # fmt: skip
                        h = gradient_factor(l, w, d, lse, inv_pos)
                        offsets = rows.to(tl.int64)[:, None] * stride_gs + cols[None, :]
                        tl.store(
                            grad_logits_ptr + offsets,
                            (h * (coef * c_scale)[:, None]).to(grad_logits_ptr.dtype.element_ty),
                            mask=row_mask[:, None] & col_mask[None, :],
                        )
            else:
                x_ptr = centers_ptr if seg == 0 else (feat_ptr if seg == 1 else queue_ptr)
                col_label_ptr = queue_label_ptr if seg == 2 else label_ptr  # (the class block reads none)
                stride_x = stride_w if seg == 0 else (stride_f if seg == 1 else stride_q)
                scale = c_scale if seg == 0 else t_scale
                for c0 in range(lo, hi, BLOCK_N):
                    cols = c0 + offs_n
                    col_mask = cols < hi
                    l, w, d, _ = wide_tile(
                        seg, rows, row_mask, row_labels, cols, col_mask, feat_ptr, x_ptr, col_label_ptr, bias_ptr,
                        stride_f, stride_x, scale, alpha, beta_on, beta_off, gamma, D, HAS_BIAS and seg == 0, EXCLUDE,
                        BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION,
                    )  # fmt: skip
                    h = gradient_factor(l, w, d, lse, inv_pos)
                    x = load_rows(x_ptr, cols, col_mask, stride_x, offs_d, D, UPCAST)
                    hx = (h * G_SCALE).to(x.dtype)  # |H| <= 1: H 2^15 in the input dtype's range (tiles.G_SCALE)
                    if seg == 0:  # the class block: its temperature relative to the samples' here
                        acc += tl.dot(hx, x, input_precision=PRECISION) * (c_scale / t_scale)
                    else:
                        acc = tl.dot(hx, x, acc, input_precision=PRECISION)
            offset += size
    acc = acc * (coef * (t_scale / G_SCALE))[:, None]
    out = grad_anchor_ptr + (pid_s.to(tl.int64) * A + rows.to(tl.int64))[:, None] * stride_ga + offs_d[None, :]
    tl.store(out, acc, mask=row_mask[:, None] & (offs_d[None, :] < D))


@autotune("wide_bwd_cols")
@triton.jit
def _paco_wide_bwd_cols_kernel(
    # data pointers
    feat_ptr, label_ptr,  # the anchors (the first A rows of the features, normalized as the loss asks) and labels
    cols_ptr, bias_ptr,  # (NCOLS, D) the column rows X (features or centers, normalized likewise), (C,) class bias
    lse_ptr, pos_ptr, grad_ptr, counted_ptr,
    grad_cols_ptr,  # (NCOLS, D) float32 out: the gradient of the column rows (unit rows), finished by the host
    # shapes and strides
    A, NCOLS, D, stride_f, stride_x, stride_g,
    rows_bucket, cols_bucket,  # autotune key only
    # constants
    scale, alpha, beta_on, beta_off, gamma, loss_scale, ignore_index,
    SEGMENT: tl.constexpr, HAS_BIAS: tl.constexpr, EXCLUDE: tl.constexpr, REDUCTION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(NCOLS, BLOCK_N), cdiv(D, BLOCK_D)): the features [pid_d BLOCK_D, (pid_d + 1) BLOCK_D) of the
    gradient of BLOCK_N columns of segment SEGMENT (1 batch, 0 centers) from every anchor, as
    _paco_bwd_cols_kernel without label sums: sum_i a_i H[i, col] A[i] / temperature, H's tile scaled by the largest
    |a| of its anchors before it is rounded to the input dtype for the product (so |a H| / max|a| <= 1)."""
    scale = as_f32(scale)
    alpha = as_f32(alpha)
    beta_on = as_f32(beta_on)
    beta_off = as_f32(beta_off)
    gamma = as_f32(gamma)
    loss_scale = as_f32(loss_scale)
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < NCOLS
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for r0 in range(0, A, BLOCK_M):
        rows = r0 + offs_m
        row_mask = rows < A
        row_labels = tl.load(label_ptr + rows, mask=row_mask, other=-1)
        lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
        coef, inv_pos = anchor_coefficients(
            grad_ptr, counted_ptr, pos_ptr, rows, row_mask, row_labels, ignore_index, loss_scale, REDUCTION
        )
        coef_max = tl.maximum(tl.max(tl.abs(coef), axis=0), 1.1754943508222875e-38)  # float32's smallest normal
        l, w, d, _ = wide_tile(
            SEGMENT, rows, row_mask, row_labels, cols, col_mask, feat_ptr, cols_ptr, label_ptr, bias_ptr, stride_f,
            stride_x, scale, alpha, beta_on, beta_off, gamma, D, HAS_BIAS, EXCLUDE, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST,
            PRECISION,
        )  # fmt: skip
        h = tl.where(row_mask[:, None], gradient_factor(l, w, d, lse, inv_pos) * (coef / coef_max)[:, None], 0.0)
        anchors = load_rows(feat_ptr, rows, row_mask, stride_f, offs_d, D, UPCAST)
        ha = tl.trans((h * G_SCALE).to(anchors.dtype))
        acc += tl.dot(ha, anchors, input_precision=PRECISION) * coef_max
    acc = acc * (scale / G_SCALE)
    out = grad_cols_ptr + cols.to(tl.int64)[:, None] * stride_g + offs_d[None, :]
    tl.store(out, acc, mask=col_mask[:, None] & (offs_d[None, :] < D))
