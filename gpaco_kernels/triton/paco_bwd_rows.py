"""_paco_bwd_rows_kernel: the row-parallel backward, dAnchors and dS.

Grid (cdiv(A, BLOCK_M), SPLITS), the forward's split of the columns. One program: BLOCK_M anchors against the
columns [pid_s * cols_per_split, (pid_s + 1) * cols_per_split); forms each anchor's (a, 1/P) from the op's upstream
gradient (tiles.anchor_coefficients), recomputes each tile's logits (rows normalized as loaded with NORMALIZE), forms
H = w / P - d exp(l - lse) and accumulates its split's part of sum_j H[:, j] X[j] / temperature over batch, queue and
centers, times each anchor's a at the end (in float32: a is 1/A after a mean); writes dS = a H / tc for given class
logits (disjoint columns). Saves nothing; the kernel that finishes dFeatures (_paco_bwd_cols_kernel with batch
columns, else _paco_epilogue_kernel) sums the splits' parts in a fixed order (deterministic).

With LABEL_SUMS (as in the forward) batch and queue tiles form only H = -gamma exp(l - lse); the positive part
w / P of their columns is added per row by _paco_epilogue_kernel, from per-label sums. With BATCH_BY_COLUMNS (the
one-pass backward, paco_bwd_one_pass.py: label sums, unsplit) the batch columns' part of dAnchors comes from the
column kernel instead, and this kernel skips them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .configs import autotune
from .tiles import (
    G_SCALE,
    anchor_coefficients,
    as_f32,
    column_tile,
    diagonal_tiles,
    given_class_tile,
    gradient_factor,
    load_rows,
    rows_descriptor,
    sample_grad_sweep,
    uniform_lse2,
)


@autotune("bwd_rows")
@triton.jit
def _paco_bwd_rows_kernel(
    # data pointers
    feat_ptr, label_ptr, queue_ptr, queue_label_ptr, logits_ptr, centers_ptr, bias_ptr,  # as the forward
    lse_ptr, pos_ptr,  # (A,) float32 each, saved by the forward
    grad_ptr, counted_ptr,  # the op's upstream gradient ((A,) or ()), (1,) float32 counted anchors
    grad_anchor_ptr,  # (SPLITS, A, D) float32 out: each split's part of dAnchors
    grad_logits_ptr,  # (A, C) out, dtype of the class logits
    # shapes and strides
    A, N, K, C, D, cols_per_split, stride_f, stride_q, stride_s, stride_w, stride_ga, stride_gs,
    rows_bucket, cols_bucket,  # autotune key only
    # constants
    t_scale, c_scale, alpha, beta_on, beta_off, gamma, loss_scale, ignore_index,
    HAS_CLASSES: tl.constexpr, FROM_LOGITS: tl.constexpr, HAS_BIAS: tl.constexpr, EXCLUDE: tl.constexpr,
    HAS_BATCH: tl.constexpr, HAS_QUEUE: tl.constexpr, NORMALIZE: tl.constexpr, REDUCTION: tl.constexpr,
    NEED_LOGITS: tl.constexpr, LABEL_SUMS: tl.constexpr, BATCH_BY_COLUMNS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    # float arguments arrive as fp64 from torch.compile (see tiles.as_f32)
    t_scale = as_f32(t_scale)
    c_scale = as_f32(c_scale)
    alpha = as_f32(alpha)
    beta_on = as_f32(beta_on)
    beta_off = as_f32(beta_off)
    gamma = as_f32(gamma)
    loss_scale = as_f32(loss_scale)
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    c_start = pid_s * cols_per_split
    c_end = c_start + cols_per_split
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < A
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    row_labels = tl.load(label_ptr + rows, mask=row_mask, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    coef, inv_pos = anchor_coefficients(
        grad_ptr, counted_ptr, pos_ptr, rows, row_mask, row_labels, ignore_index, loss_scale, REDUCTION
    )
    if (HAS_CLASSES and FROM_LOGITS) and NEED_LOGITS:
        # Given class logits: dS = a H / tc, elementwise in each tile (no product, nothing into dAnchors). Done
        # first, before the anchors are loaded and the accumulator is live, and in tiles a quarter as wide: with
        # 4 warps a 64 x 64 tile of S, its weights and H spill hundreds of bytes and 64 x 32 a few (read from the
        # SASS); 64 x 16 does not, and the class block is a few of the columns.
        for c0 in range(tl.maximum(c_start, 0), tl.minimum(c_end, C), BLOCK_N // 4):
            cols, col_mask, l, w, d = given_class_tile(
                c0, tl.minimum(c_end, C), rows, row_mask, row_labels, logits_ptr, stride_s, bias_ptr, c_scale, alpha,
                beta_on, beta_off, gamma, BLOCK_N // 4, HAS_BIAS, EXCLUDE,
            )  # fmt: skip
            h = gradient_factor(l, w, d, lse, inv_pos)
            offsets = rows.to(tl.int64)[:, None] * stride_gs + cols[None, :]
            tl.store(
                grad_logits_ptr + offsets,
                (h * (coef * c_scale)[:, None]).to(grad_logits_ptr.dtype.element_ty),
                mask=row_mask[:, None] & col_mask[None, :],
            )
    anchors = load_rows(feat_ptr, rows, row_mask, stride_f, offs_d, D, UPCAST, NORMALIZE)
    if LABEL_SUMS:
        sample_lse2 = uniform_lse2(lse, gamma)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    offset = 0
    for seg in tl.static_range(3):
        present = ((seg == 0 and HAS_CLASSES) or (seg == 1 and HAS_BATCH)) or (seg == 2 and HAS_QUEUE)
        # given class logits: above; batch columns by the one-pass column kernel with BATCH_BY_COLUMNS
        if (present and not (seg == 0 and FROM_LOGITS)) and not (seg == 1 and BATCH_BY_COLUMNS):
            size = C if seg == 0 else (N if seg == 1 else K)
            x_ptr = centers_ptr if seg == 0 else (feat_ptr if seg == 1 else queue_ptr)
            stride_x = stride_w if seg == 0 else (stride_f if seg == 1 else stride_q)
            lo = tl.maximum(c_start - offset, 0)
            hi = tl.minimum(c_end - offset, size)
            if LABEL_SUMS and seg > 0:  # tiles without masks, and the tiles the diagonal crosses
                full_end = lo + (tl.maximum(hi - lo, 0) // BLOCK_N) * BLOCK_N  # the last tile, if partial, after
                x_desc = rows_descriptor(x_ptr, hi, D, stride_x, BLOCK_N, BLOCK_D, TMA)
                if seg == 1:
                    first, last = diagonal_tiles(lo, full_end, pid_m * BLOCK_M, BLOCK_M, BLOCK_N)
                else:
                    first = full_end
                    last = full_end
                acc = -acc  # the sweeps subtract (tiles.sample_grad_sweep)
                # fmt: off
                acc = sample_grad_sweep(acc, lo, first, hi, anchors, rows, x_ptr, x_desc, stride_x, offs_n, offs_d,
                                        D, t_scale, sample_lse2, BLOCK_N, UPCAST, PRECISION, NORMALIZE, False, True,
                                        TMA)
                acc = sample_grad_sweep(acc, first, last, hi, anchors, rows, x_ptr, x_desc, stride_x, offs_n,
                                        offs_d, D, t_scale, sample_lse2, BLOCK_N, UPCAST, PRECISION, NORMALIZE, True,
                                        True, TMA)
                acc = sample_grad_sweep(acc, last, full_end, hi, anchors, rows, x_ptr, x_desc, stride_x, offs_n,
                                        offs_d, D, t_scale, sample_lse2, BLOCK_N, UPCAST, PRECISION, NORMALIZE, False,
                                        True, TMA)
                acc = sample_grad_sweep(acc, full_end, hi, hi, anchors, rows, x_ptr, x_desc, stride_x, offs_n,
                                        offs_d, D, t_scale, sample_lse2, BLOCK_N, UPCAST, PRECISION, NORMALIZE,
                                        seg == 1, False, TMA)
                # fmt: on
                acc = -acc
            else:
                for c0 in range(lo, hi, BLOCK_N):
                    cols = c0 + offs_n
                    col_mask = cols < hi
                    l, w, d, _ = column_tile(
                        seg, anchors, rows, row_mask, row_labels, cols, col_mask,
                        feat_ptr, label_ptr, queue_ptr, queue_label_ptr, logits_ptr, centers_ptr, bias_ptr,
                        stride_f, stride_q, stride_s, stride_w, t_scale, c_scale, alpha, beta_on, beta_off, gamma,
                        offs_d, D, FROM_LOGITS, HAS_BIAS, EXCLUDE, UPCAST, PRECISION, NORMALIZE,
                    )  # fmt: skip
                    h = gradient_factor(l, w, d, lse, inv_pos)
                    x = load_rows(x_ptr, cols, col_mask, stride_x, offs_d, D, UPCAST, NORMALIZE)
                    hx = (h * G_SCALE).to(x.dtype)
                    if seg == 0:  # the class block (few tiles): its temperature relative to the samples' here
                        acc += tl.dot(hx, x, input_precision=PRECISION) * (c_scale / t_scale)
                    else:  # accumulated in place; the scale t_scale / G_SCALE is applied once, after the loop
                        acc = tl.dot(hx, x, acc, input_precision=PRECISION)
        if present:
            offset += C if seg == 0 else (N if seg == 1 else K)
    acc = acc * (coef * (t_scale / G_SCALE))[:, None]
    out = grad_anchor_ptr + (pid_s.to(tl.int64) * A + rows.to(tl.int64))[:, None] * stride_ga + offs_d[None, :]
    tl.store(out, acc, mask=row_mask[:, None] & (offs_d[None, :] < D))
