"""_paco_epilogue_kernel: the last step of dFeatures.

Adds, per row of features, the column kernel's float32 gradient of the batch columns (HAS_COLS) and the row kernel's
SPLITS float32 parts of dAnchors (the first A rows; in a fixed order: deterministic), chains the sum through the
normalization with NORMALIZE (tiles.normalize_backward) and stores it in the features' dtype. (Doing this at the end
of the column kernel made it spill: its accumulator, the split parts and the raw rows live at once.)

Grid (cdiv(R, BLOCK_R),). One program: BLOCK_R rows. Saves nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import add_split_parts, normalize_backward


@triton.jit
def _paco_epilogue_kernel(
    # data pointers
    parts_ptr,  # (SPLITS, A, D) float32: the row kernel's parts of dAnchors
    batch_grad_ptr,  # (R, D) float32: the column kernel's gradient of the batch columns (HAS_COLS)
    x_ptr,  # (R, D) the raw rows (read with NORMALIZE)
    out_ptr,  # (R, D) out, the input's dtype
    # shapes and strides
    R, A, SPLITS, D, stride_x, stride_out,
    # constants
    HAS_COLS: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    row_mask = rows < R
    mask = row_mask[:, None] & (offs_d[None, :] < D)
    g = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
    if HAS_COLS:
        g += tl.load(batch_grad_ptr + rows.to(tl.int64)[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
    g = add_split_parts(g, parts_ptr, rows, row_mask & (rows < A), A, SPLITS, offs_d, D)
    if NORMALIZE:
        g = normalize_backward(g, x_ptr, rows, row_mask, stride_x, offs_d, D)
    out = out_ptr + rows.to(tl.int64)[:, None] * stride_out + offs_d[None, :]
    tl.store(out, g.to(out_ptr.dtype.element_ty), mask=mask)
