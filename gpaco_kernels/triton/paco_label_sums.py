"""_paco_label_sums_kernel: per-label sums of the contrast rows, for the positive terms without per-pair work.

Grid (G,), one program per group id of ops/spec.py's label_groups (rows of [features; queue] that share a label,
contiguous in the stable sort `order`): a program reads its own rows and nothing else.
- With a class block (CLASSES: labels index C classes) group c < C is the rows of label c, order[bounds[c]:
  bounds[c + 1]]; program C holds everything else and only checks it: flag[0] = 1 when a row there has a label
  other than ignore_index (a label out of the class range, which the forward reports as an error); its sums are 0.
- Without one, program p is the group that starts at sorted position p, when a label starts there (p == 0 or
  sorted_labels[p - 1] != sorted_labels[p]) and ends at bounds[p]; other programs exit at once.

It writes, in float32: sums[g], the sum of the group's contrast rows (batch rows when they are columns, HAS_BATCH,
and queue rows), normalized with NORMALIZE, and counts[g], how many; with COEFFICIENTS (the backward) coef_sums[g],
the sum over the group's anchors i (rows < A) of a_i / P_i times the anchor's unit row (a and 1/P from the op's
upstream gradient, as the row kernels form them). Each sum is taken by one program in a fixed order: deterministic,
no atomics. Work and reads are O((N + K) D) once per direction, against the O(A (N + K)) label compares the tiles no
longer make. One program per group: a large group (the background class of a segmentation batch) is read by one SM.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import anchor_coefficients, as_f32, load_tile


@triton.jit
def _paco_label_sums_kernel(
    # data pointers
    feat_ptr, queue_ptr, label_ptr,  # (N, D), (K, D), (N,) int64 labels of features
    order_ptr, sorted_label_ptr, bounds_ptr,  # label_groups: (N + K,) int64 each, bounds (G,) or (C + 1,)
    sums_ptr, counts_ptr, flag_ptr,  # (G, D), (G,) float32 out; (1,) int32 out with CLASSES
    pos_ptr, grad_ptr, counted_ptr, coef_sums_ptr,  # COEFFICIENTS: saved P, upstream gradient, counted; (G, D) out
    # shapes and strides
    NF, NK, A, C, D, stride_f, stride_q,
    # constants
    loss_scale, ignore_index,
    CLASSES: tl.constexpr, HAS_BATCH: tl.constexpr, NORMALIZE: tl.constexpr, COEFFICIENTS: tl.constexpr,
    REDUCTION: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, CHECK_BLOCK: tl.constexpr,
):  # fmt: skip
    loss_scale = as_f32(loss_scale)
    g = tl.program_id(0)
    offs_d = tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, BLOCK_R)
    if CLASSES:
        start = tl.load(bounds_ptr + g, mask=g < C, other=0)
        end = tl.load(bounds_ptr + g + 1, mask=g < C, other=0)  # program C: an empty range, it only checks
    else:
        start = g
        first = g == 0
        if g > 0:
            first = tl.load(sorted_label_ptr + g - 1) != tl.load(sorted_label_ptr + g)
        end = tl.where(first, tl.load(bounds_ptr + g), g)
    sums = tl.zeros((BLOCK_D,), tl.float32)
    counts = tl.zeros((BLOCK_R,), tl.float32)
    coef_sums = tl.zeros((BLOCK_D,), tl.float32)
    for p0 in range(start, end, BLOCK_R):
        at = p0 + offs_r
        mask = at < end
        row = tl.load(order_ptr + at, mask=mask, other=0)
        from_features = mask & (row < NF)
        from_queue = mask & (row >= NF)
        # one load from features or the queue (two tiles at once spilled in float32)
        feature_rows = feat_ptr + row.to(tl.int64)[:, None] * stride_f + offs_d[None, :]
        queue_rows = queue_ptr + (row - NF).to(tl.int64)[:, None] * stride_q + offs_d[None, :]
        ptrs = tl.where(from_features[:, None], feature_rows, queue_rows)
        x = load_tile(ptrs, mask[:, None] & (offs_d[None, :] < D), True, NORMALIZE)
        if HAS_BATCH:
            column = from_features | from_queue
        else:
            column = from_queue
        sums += tl.sum(tl.where(column[:, None], x, 0.0), axis=0)
        counts += column.to(tl.float32)
        if COEFFICIENTS:
            anchor = from_features & (row < A)
            labels = tl.load(label_ptr + row, mask=anchor, other=ignore_index)
            coef, inv_pos = anchor_coefficients(
                grad_ptr, counted_ptr, pos_ptr, row, anchor, labels, ignore_index, loss_scale, REDUCTION
            )
            coef_sums += tl.sum(x * (coef * inv_pos)[:, None], axis=0)
    if CLASSES:
        if g == C:  # the rows below class 0 and from class C on: each must be ignore_index
            below = tl.load(bounds_ptr)
            above = tl.load(bounds_ptr + C)
            offs_c = tl.arange(0, CHECK_BLOCK)
            bad = tl.zeros((CHECK_BLOCK,), tl.int32)
            for p0 in range(0, below, CHECK_BLOCK):
                at = p0 + offs_c
                label = tl.load(sorted_label_ptr + at, mask=at < below, other=ignore_index)
                bad = tl.maximum(bad, (label != ignore_index).to(tl.int32))
            for p0 in range(above, NF + NK, CHECK_BLOCK):
                at = p0 + offs_c
                label = tl.load(sorted_label_ptr + at, mask=at < NF + NK, other=ignore_index)
                bad = tl.maximum(bad, (label != ignore_index).to(tl.int32))
            tl.store(flag_ptr, tl.max(bad, axis=0))
    in_d = offs_d < D
    tl.store(sums_ptr + g.to(tl.int64) * D + offs_d, sums, mask=in_d)
    tl.store(counts_ptr + g, tl.sum(counts, axis=0))
    if COEFFICIENTS:
        tl.store(coef_sums_ptr + g.to(tl.int64) * D + offs_d, coef_sums, mask=in_d)
