"""_paco_epilogue_kernel: the last step of dFeatures.

Adds, per row of features, the column kernel's float32 gradient of the batch columns (HAS_COLS) and the row kernel's
SPLITS float32 parts of dAnchors (the first A rows; in a fixed order: deterministic), chains the sum through the
normalization with NORMALIZE (tiles.normalize_backward) and stores it in the features' dtype. (Doing this at the end
of the column kernel made it spill: its accumulator, the split parts and the raw rows live at once.)

With LABEL_SUMS it also adds the positive part w / P of the batch and queue columns' gradient, which the row and
column kernels leave out, from _paco_label_sums_kernel's per-group sums: with c_i = a_i / P_i (tiles.
anchor_coefficients) and u_i the unit row of row i, anchor i takes (alpha / t) c_i (M[g_i] - u_i) (M: the group's
contrast rows, less its own column for batch columns) and, when batch rows take a gradient as columns (HAS_COLS),
batch row j takes (alpha / t) (R[g_j] - c_j u_j) (R: the sum of c u over the group's anchors, less itself).

Grid (cdiv(R, BLOCK_R),). One program: BLOCK_R rows. Saves nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import add_split_parts, anchor_coefficients, as_f32, group_sums, load_rows, normalize_backward, row_groups


@triton.jit
def _paco_epilogue_kernel(
    # data pointers
    parts_ptr,  # (SPLITS, A, D) float32: the row kernel's parts of dAnchors
    batch_grad_ptr,  # (R, D) float32: the column kernel's gradient of the batch columns (HAS_COLS)
    x_ptr,  # (R, D) the raw rows (read with NORMALIZE)
    out_ptr,  # (R, D) out, the input's dtype
    # LABEL_SUMS: (R,) labels, (R,) group of each row (tiles.row_groups), (G, D) float32 sums M and R, and for the
    # coefficients the saved P, the upstream gradient and the counted anchors
    label_ptr, group_ptr, sums_ptr, coef_sums_ptr, pos_ptr, grad_ptr, counted_ptr,
    # shapes and strides
    R, A, C, SPLITS, D, stride_x, stride_out,
    # constants
    positive_scale, loss_scale, ignore_index,  # alpha / t
    HAS_COLS: tl.constexpr, NORMALIZE: tl.constexpr, LABEL_SUMS: tl.constexpr, HAS_CLASSES: tl.constexpr,
    HAS_BATCH: tl.constexpr, REDUCTION: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    row_mask = rows < R
    mask = row_mask[:, None] & (offs_d[None, :] < D)
    g = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
    if HAS_COLS:
        g += tl.load(batch_grad_ptr + rows.to(tl.int64)[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
    g = add_split_parts(g, parts_ptr, rows, row_mask & (rows < A), A, SPLITS, offs_d, D)
    if LABEL_SUMS:
        positive_scale = as_f32(positive_scale)
        loss_scale = as_f32(loss_scale)
        anchor = row_mask & (rows < A)
        labels = tl.load(label_ptr + rows, mask=anchor, other=ignore_index)
        coef, inv_pos = anchor_coefficients(
            grad_ptr, counted_ptr, pos_ptr, rows, anchor, labels, ignore_index, loss_scale, REDUCTION
        )
        c = coef * inv_pos  # 0 past the anchors
        groups = row_groups(group_ptr, rows, row_mask, C, HAS_CLASSES)
        positives = group_sums(groups, row_mask, sums_ptr, offs_d, D) * c[:, None]
        if HAS_BATCH:  # the own column: not a positive of its anchor
            own = c
            if HAS_COLS:
                positives += group_sums(groups, row_mask, coef_sums_ptr, offs_d, D)
                own = 2.0 * c
            positives -= load_rows(x_ptr, rows, row_mask, stride_x, offs_d, D, True, NORMALIZE) * own[:, None]
        g += positive_scale * positives
    if NORMALIZE:
        g = normalize_backward(g, x_ptr, rows, row_mask, stride_x, offs_d, D)
    out = out_ptr + rows.to(tl.int64)[:, None] * stride_out + offs_d[None, :]
    tl.store(out, g.to(out_ptr.dtype.element_ty), mask=mask)
