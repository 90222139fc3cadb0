"""_paco_finalize_kernel: the forward's last step, the merge of the column splits and the loss.

Grid (1,). One program walks the anchors in blocks of BLOCK: merges each anchor's split partials exactly
(m = max m_s, z = sum z_s exp(m_s - m), the plain sums add), forms lse = m + log(z + lse_eps) and the per-anchor loss
of ops/spec.py's finalize_loss, and reduces as REDUCTION says (0 'none': the (A,) losses; 1 'sum'; 2 'mean' over the
counted anchors), written in the loss tensor's dtype. Saves lse and P per anchor and the number of counted anchors
for the backward, and ok = 0 when some program of the forward read a label outside the class range (the launcher
asserts it on the device, without a sync). One program: it reads 5 x SPLITS x A floats, microseconds next to the
sweep, and the sum is in a fixed order (deterministic).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import as_f32


@triton.jit
def _paco_finalize_kernel(
    # data pointers
    part_ptr,  # (5, SPLITS, A) float32: m, z, sum w l, P, label flag of each split (_paco_fwd_kernel)
    label_ptr,  # (N,) int64, the anchors' labels first
    loss_ptr,  # (A,) with REDUCTION 0, else (), out, the features' dtype
    lse_ptr, pos_ptr,  # (A,) float32 out each
    counted_ptr,  # (1,) float32 out: anchors not ignored
    ok_ptr,  # (1,) int32 out: 1 when every label was in range
    # shapes
    A, SPLITS,
    # constants
    ignore_index, loss_scale, lse_eps,
    REDUCTION: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    loss_scale = as_f32(loss_scale)
    lse_eps = as_f32(lse_eps)
    offs = tl.arange(0, BLOCK)
    stride_part = SPLITS.to(tl.int64) * A
    total = tl.zeros((BLOCK,), tl.float32)
    count = tl.zeros((BLOCK,), tl.float32)
    bad = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, A, BLOCK):
        rows = start + offs
        mask = rows < A
        m = tl.full((BLOCK,), float("-inf"), tl.float32)
        for s in range(SPLITS):
            m = tl.maximum(m, tl.load(part_ptr + s * A + rows, mask=mask, other=float("-inf")))
        shift = tl.where(m == float("-inf"), 0.0, m)  # a row of -inf logits: exp(-inf - 0) = 0
        z = tl.zeros((BLOCK,), tl.float32)
        wl = tl.zeros((BLOCK,), tl.float32)
        pos = tl.zeros((BLOCK,), tl.float32)
        for s in range(SPLITS):
            base = part_ptr + s * A + rows
            m_s = tl.load(base, mask=mask, other=float("-inf"))
            z += tl.load(base + stride_part, mask=mask, other=0.0) * tl.exp(m_s - shift)
            wl += tl.load(base + 2 * stride_part, mask=mask, other=0.0)
            pos += tl.load(base + 3 * stride_part, mask=mask, other=0.0)
            bad = tl.maximum(bad, tl.load(base + 4 * stride_part, mask=mask, other=0.0))
        lse = m + tl.log(z + lse_eps)
        labels = tl.load(label_ptr + rows, mask=mask, other=ignore_index)
        counted = mask & (labels != ignore_index)
        valid = counted & (pos > 0)
        # Selected before the product: an anchor without positives may have lse = -inf, and 0 * -inf is NaN.
        loss = loss_scale * (wl - pos * tl.where(valid, lse, 0.0)) / tl.where(valid, pos, 1.0)
        loss = tl.where(valid, loss, 0.0)
        tl.store(lse_ptr + rows, lse, mask=mask)
        tl.store(pos_ptr + rows, pos, mask=mask)
        if REDUCTION == 0:
            tl.store(loss_ptr + rows, loss.to(loss_ptr.dtype.element_ty), mask=mask)
        else:
            total += tl.where(mask, loss, 0.0)
        count += counted.to(tl.float32)
    n = tl.sum(count, axis=0)
    if REDUCTION == 1:
        tl.store(loss_ptr, tl.sum(total, axis=0).to(loss_ptr.dtype.element_ty))
    if REDUCTION == 2:
        tl.store(loss_ptr, (tl.sum(total, axis=0) / tl.maximum(n, 1.0)).to(loss_ptr.dtype.element_ty))
    tl.store(counted_ptr, n)
    tl.store(ok_ptr, (tl.max(bad, axis=0) == 0).to(tl.int32))
