"""_paco_fwd_kernel: the forward sweep.

Grid (cdiv(A, BLOCK_M), SPLITS). One program: BLOCK_M anchors against the columns
[pid_s * cols_per_split, (pid_s + 1) * cols_per_split) of [class block | batch | queue], streamed in tiles of BLOCK_N
with an online log-sum-exp, the rows normalized as they are loaded with NORMALIZE. Saves, per anchor and split, the
partial m (max), z = sum d exp(l - m), sum w l and P = sum w, and a flag that is 1 when a label the program read is
out of the class range (with a class block, labels index it). _paco_finalize_kernel merges the splits exactly and
forms the loss.

With LABEL_SUMS the batch and queue tiles carry no label work: their denominator weight is gamma on every column
(the anchor's own column and the columns past the range's end hold l = -inf, masked on the tiles they touch), and
their positive terms come from _paco_label_sums_kernel's per-group sums, once per anchor in the first split:
sum_j w l = alpha / t <a_i, M[g_i] - a_i> and P = alpha (n[g_i] - 1) (the own column only for batch columns).
Without it (small steps, where the sums' extra launches cost more than they save) each tile compares labels.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .configs import autotune
from .tiles import (
    as_f32,
    column_tile,
    diagonal_tiles,
    exp,
    given_class_tile,
    group_sums,
    load_rows,
    lse_tile_step,
    out_of_range,
    row_groups,
    rows_descriptor,
    sample_lse_sweep,
    store_partials,
)


@autotune("fwd")
@triton.jit
def _paco_fwd_kernel(
    # data pointers
    feat_ptr, label_ptr,  # (N, D), (N,) int64
    queue_ptr, queue_label_ptr,  # (K, D), (K,) int64
    logits_ptr, centers_ptr, bias_ptr,  # (A, C) class logits S, (C, D) centers W, (C,) float32 log prior
    # LABEL_SUMS (_paco_label_sums_kernel): (N,) group of each row (tiles.group_rows), (G, D) and (G,) float32 label
    # sums and counts, (1,) int32 1 when a batch or queue label is out of the class range
    group_ptr, sums_ptr, counts_ptr, sums_flag_ptr,
    part_ptr,  # (5, SPLITS, A) float32 out: m, z, sum w l, P of each split, and the label-range flag
    # shapes and strides
    A, N, K, C, D, cols_per_split, stride_f, stride_q, stride_s, stride_w,
    rows_bucket, cols_bucket,  # autotune key only
    # constants
    t_scale, c_scale, alpha, beta_on, beta_off, gamma, ignore_index,
    HAS_CLASSES: tl.constexpr, FROM_LOGITS: tl.constexpr, HAS_BIAS: tl.constexpr, EXCLUDE: tl.constexpr,
    HAS_BATCH: tl.constexpr, HAS_QUEUE: tl.constexpr, NORMALIZE: tl.constexpr, LABEL_SUMS: tl.constexpr,
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
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    num_splits = tl.num_programs(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < A
    offs_d = tl.arange(0, BLOCK_D)
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
    if HAS_CLASSES and FROM_LOGITS:
        # Given class logits take no product: first, before the anchors are loaded, and in tiles a quarter as wide
        # (as the row backward's dS: a 64 x 64 tile of S and its weights spills with 4 warps, read from the SASS).
        for c0 in range(c_start, tl.minimum(c_end, C), BLOCK_N // 4):
            _, _, l, w, d = given_class_tile(
                c0, tl.minimum(c_end, C), rows, row_mask, row_labels, logits_ptr, stride_s, bias_ptr, c_scale, alpha,
                beta_on, beta_off, gamma, BLOCK_N // 4, HAS_BIAS, EXCLUDE,
            )  # fmt: skip
            m, z, wl, pos = lse_tile_step(m, z, wl, pos, l, w, d)
    anchors = load_rows(feat_ptr, rows, row_mask, stride_f, offs_d, D, UPCAST, NORMALIZE)
    if LABEL_SUMS:
        if pid_s == 0:  # the sample positives, once per anchor, before the loop (after it, they spilled)
            # <a_i, M[g_i]>, less <a_i, a_i's own unit row> for batch columns: two row tiles one after the other
            # (one float32 tile live at a time: both at once spilled at 64 x 32 on sm_80)
            group = row_groups(group_ptr, rows, row_mask, C, HAS_CLASSES)
            sample_wl = tl.sum(anchors.to(tl.float32) * group_sums(group, row_mask, sums_ptr, offs_d, D), axis=1)
            count = tl.load(counts_ptr + group, mask=row_mask, other=0.0)
            if HAS_BATCH:
                own = load_rows(feat_ptr, rows, row_mask, stride_f, offs_d, D, True, NORMALIZE)
                own_dot = tl.sum(anchors.to(tl.float32) * own, axis=1)
                sample_wl -= own_dot
                count -= tl.where(row_mask, 1.0, 0.0)
                # The max runs over every column, the own one included (which the sweeps mask), as in the published
                # code and ops/reference.py: with lse_eps > 0 the shift matters once the own logit leads the others
                # by ~28 (log 1e-12).
                m_own = tl.maximum(m, own_dot * t_scale)
                z = z * exp(m - m_own)
                m = m_own
            wl += (alpha * t_scale) * sample_wl
            pos += alpha * count
        if HAS_CLASSES:  # the batch and queue labels, which the tiles no longer read, checked by the sums kernel
            bad_label = tl.maximum(bad_label, tl.load(sums_flag_ptr))
    offset = 0
    for seg in tl.static_range(3):
        present = ((seg == 0 and HAS_CLASSES) or (seg == 1 and HAS_BATCH)) or (seg == 2 and HAS_QUEUE)
        size = C if seg == 0 else (N if seg == 1 else K)
        if present and not (seg == 0 and FROM_LOGITS):  # given class logits: above
            lo = tl.maximum(c_start - offset, 0)
            hi = tl.minimum(c_end - offset, size)
            if LABEL_SUMS and seg > 0:
                # full tiles without masks; the tiles the diagonal crosses mask the own column; the last, partial
                # tile masks the columns past hi
                x_ptr = feat_ptr if seg == 1 else queue_ptr
                stride_x = stride_f if seg == 1 else stride_q
                x_desc = rows_descriptor(x_ptr, hi, D, stride_x, BLOCK_N, BLOCK_D, TMA)
                full_end = lo + (tl.maximum(hi - lo, 0) // BLOCK_N) * BLOCK_N
                if seg == 1:
                    first, last = diagonal_tiles(lo, full_end, pid_m * BLOCK_M, BLOCK_M, BLOCK_N)
                else:
                    first = full_end
                    last = full_end
                # fmt: off
                m, z = sample_lse_sweep(m, z, lo, first, hi, anchors, rows, x_ptr, x_desc, stride_x, offs_n, offs_d,
                                        D, t_scale, gamma, BLOCK_N, UPCAST, PRECISION, NORMALIZE, False, False, TMA)
                m, z = sample_lse_sweep(m, z, first, last, hi, anchors, rows, x_ptr, x_desc, stride_x, offs_n,
                                        offs_d, D, t_scale, gamma, BLOCK_N, UPCAST, PRECISION, NORMALIZE, False, True,
                                        TMA)
                m, z = sample_lse_sweep(m, z, last, full_end, hi, anchors, rows, x_ptr, x_desc, stride_x, offs_n,
                                        offs_d, D, t_scale, gamma, BLOCK_N, UPCAST, PRECISION, NORMALIZE, False, False,
                                        TMA)
                m, z = sample_lse_sweep(m, z, full_end, hi, hi, anchors, rows, x_ptr, x_desc, stride_x, offs_n,
                                        offs_d, D, t_scale, gamma, BLOCK_N, UPCAST, PRECISION, NORMALIZE, True,
                                        seg == 1, TMA)
                # fmt: on
            else:
                for c0 in range(lo, hi, BLOCK_N):
                    cols = c0 + offs_n
                    col_mask = cols < hi
                    l, w, d, col_labels = column_tile(
                        seg, anchors, rows, row_mask, row_labels, cols, col_mask,
                        feat_ptr, label_ptr, queue_ptr, queue_label_ptr, logits_ptr, centers_ptr, bias_ptr,
                        stride_f, stride_q, stride_s, stride_w, t_scale, c_scale, alpha, beta_on, beta_off, gamma,
                        offs_d, D, FROM_LOGITS, HAS_BIAS, EXCLUDE, UPCAST, PRECISION, NORMALIZE,
                    )  # fmt: skip
                    if HAS_CLASSES and seg > 0:  # batch and queue labels: every one is read by some program
                        bad_label = tl.maximum(bad_label, out_of_range(col_labels, col_mask, C, ignore_index))
                    m, z, wl, pos = lse_tile_step(m, z, wl, pos, l, w, d)
        if present:
            offset += size

    store_partials(part_ptr, pid_s, num_splits, A, rows, row_mask, m, z, wl, pos, bad_label)
