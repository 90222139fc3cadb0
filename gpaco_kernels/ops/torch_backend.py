"""Backend "torch": the streaming algorithm in plain PyTorch, on any device PyTorch runs on (the fallback).

Anchors are processed in row chunks and the contrast columns [class block | batch | queue] in column tiles. Per
anchor the forward keeps four running numbers over the tiles: the max m, the rescaled sum z of d * exp(l - m), the
sum of w * l and the sum P of w; it saves (lse, P) per anchor and nothing of size A x M. The backward recomputes each
tile's logits from the inputs and turns them into the three products dAnchors = G X, dX = G^T A and dS = G. Peak
extra memory is a few (BLOCK_ROWS x tile) buffers plus the (N + C) x D gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .op import define_backend_ops, define_eager, no_unit_gradients
from .spec import (
    ContrastInputs,
    OpParams,
    class_block_weights,
    compute_dtype,
    denominator_terms,
    finalize_loss,
    finish_gradients,
    gradient_coefficients,
    normalized,
    per_anchor_grad,
    reduce_losses,
    sample_weights,
    weighted_logits,
)

NAME = "torch"

# Anchor rows per chunk, and elements per (rows x columns) tile: a tile of 2^18 float32 is 1 MB, and the
# elementwise chain keeps about six of them alive. Tests shrink both to exercise the online merge.
BLOCK_ROWS = 256
TILE_ELEMENTS = 1 << 18


def availability():
    return None


@dataclass
class _Segment:
    kind: str  # "logits" (S given), "centers" (W given), "batch" or "queue"
    size: int  # number of columns
    scale: float  # 1 / temperature of the segment
    matrix: torch.Tensor | None = None  # (size, D) rows the anchors are multiplied with; None for "logits"
    bias: torch.Tensor | None = None  # (size,) added before scaling (class block only)


def _segments(x: ContrastInputs, p: OpParams, feats: torch.Tensor, dtype: torch.dtype):
    segs = []
    C = x.num_classes
    bias = None if x.center_bias is None else x.center_bias.to(dtype)
    if C and x.center_logits is not None:
        segs.append(_Segment("logits", C, 1.0 / p.center_temperature, None, bias))
    elif C:
        segs.append(_Segment("centers", C, 1.0 / p.center_temperature, x.centers.to(dtype), bias))
    if p.batch_columns:
        segs.append(_Segment("batch", feats.shape[0], 1.0 / p.temperature, feats))
    if x.queue is not None and x.queue.shape[0] > 0:
        segs.append(_Segment("queue", x.queue.shape[0], 1.0 / p.temperature, x.queue.to(dtype)))
    return segs


def _tile_sizes(num_anchors: int):
    rows = max(1, min(BLOCK_ROWS, num_anchors))
    return rows, max(1, TILE_ELEMENTS // rows)


def _tiles(x: ContrastInputs, p: OpParams, segs, anchors: torch.Tensor, r0: int, cols_per_tile: int):
    """Yield (segment, c0, c1, l, w, d) for the anchor chunk starting at row r0: logits, positive and denominator
    weights of one column tile, each (rows, c1 - c0) in the compute dtype."""
    rows = anchors.shape[0]
    device, dtype = anchors.device, anchors.dtype
    anchor_labels = x.labels[r0 : r0 + rows]
    anchor_rows = torch.arange(r0, r0 + rows, device=device)
    for seg in segs:
        for c0 in range(0, seg.size, cols_per_tile):
            c1 = min(c0 + cols_per_tile, seg.size)
            if seg.kind == "logits":
                l = x.center_logits[r0 : r0 + rows, c0:c1].to(dtype)
            else:
                l = anchors @ seg.matrix[c0:c1].T
            if seg.bias is not None:
                l = l + seg.bias[c0:c1]
            l = l * seg.scale
            cols = torch.arange(c0, c1, device=device)
            if seg.kind in ("logits", "centers"):
                w, d = class_block_weights(anchor_labels, cols, p, dtype)
            elif seg.kind == "batch":
                w, d = sample_weights(anchor_labels, x.labels[c0:c1], p, anchor_rows, cols, dtype)
            else:
                w, d = sample_weights(anchor_labels, x.queue_labels[c0:c1], p, dtype=dtype)
            yield seg, c0, c1, l, w, d


def _finite_or_zero(m: torch.Tensor) -> torch.Tensor:
    # The shift of a row whose logits so far are all -inf: any finite value keeps exp(-inf - shift) = 0 (with the
    # max itself it would be exp(-inf + inf) = NaN).
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


def sweep_forward(x: ContrastInputs, p: OpParams):
    """Per-anchor loss, lse and P, each (A,) in the compute dtype."""
    dtype = compute_dtype(x.features.dtype)
    feats = x.features.to(dtype)
    segs = _segments(x, p, feats, dtype)
    A = p.num_anchors
    rows_per_chunk, cols_per_tile = _tile_sizes(A)
    wl = torch.zeros(A, dtype=dtype, device=feats.device)
    lse, pos = torch.zeros_like(wl), torch.zeros_like(wl)
    for r0 in range(0, A, rows_per_chunk):
        anchors = feats[r0 : min(r0 + rows_per_chunk, A)]
        r1 = r0 + anchors.shape[0]
        m = torch.full((anchors.shape[0],), float("-inf"), dtype=dtype, device=feats.device)
        z = torch.zeros_like(m)
        for _, _, _, l, w, d in _tiles(x, p, segs, anchors, r0, cols_per_tile):
            m_new = torch.maximum(m, l.max(dim=1).values)
            shift = _finite_or_zero(m_new)
            z = z * torch.exp(m - shift) + denominator_terms(d, l, shift[:, None]).sum(dim=1)
            wl[r0:r1] += weighted_logits(w, l).sum(dim=1)
            pos[r0:r1] += w.sum(dim=1)
            m = m_new
        lse[r0:r1] = m + torch.log(z + p.lse_eps)
    return finalize_loss(wl, pos, lse, x.labels[:A], p), lse, pos


def sweep_backward(x: ContrastInputs, p: OpParams, lse, pos, grad_loss, needs):
    """Gradients (features, center_logits, centers) in the compute dtype from the saved per-anchor (lse, P) and the
    upstream gradient of each anchor's loss; each None when not needed. Queue rows never get a gradient."""
    need_features, need_logits, need_centers = needs
    dtype = compute_dtype(x.features.dtype)
    feats = x.features.to(dtype)
    segs = _segments(x, p, feats, dtype)
    A = p.num_anchors
    grad_feats = torch.zeros_like(feats) if need_features else None
    grad_logits = torch.zeros_like(x.center_logits, dtype=dtype) if need_logits else None
    grad_centers = torch.zeros_like(segs[0].matrix) if need_centers else None
    a, inv_pos = gradient_coefficients(grad_loss.to(dtype), pos, x.labels[:A], p)
    rows_per_chunk, cols_per_tile = _tile_sizes(A)
    for r0 in range(0, A, rows_per_chunk):
        r1 = min(r0 + rows_per_chunk, A)
        anchors = feats[r0:r1]
        grad_anchors = torch.zeros_like(anchors) if need_features else None
        ra, rinv, rlse = a[r0:r1, None], inv_pos[r0:r1, None], lse[r0:r1, None]
        for seg, c0, c1, l, w, d in _tiles(x, p, segs, anchors, r0, cols_per_tile):
            # dL/dl times the segment's 1/temperature: the gradient with respect to the raw dot products.
            g = ra * (w * rinv - denominator_terms(d, l, rlse)) * seg.scale
            if seg.kind == "logits":
                if need_logits:
                    grad_logits[r0:r1, c0:c1] = g
                continue
            if need_features:
                grad_anchors += g @ seg.matrix[c0:c1]
            if seg.kind == "batch" and need_features and p.batch_column_grad:
                grad_feats[c0:c1] += g.T @ anchors
            elif seg.kind == "centers" and need_centers:
                grad_centers[c0:c1] += g.T @ anchors
        if need_features:
            grad_feats[r0:r1] += grad_anchors
    return grad_feats, grad_logits, grad_centers


def _forward(x: ContrastInputs, p: OpParams, unit_gradients: bool):
    if unit_gradients:
        raise ValueError("the torch backend does not compute unit gradients in its forward")
    losses, lse, pos = sweep_forward(normalized(x) if p.normalize else x, p)
    loss, counted = reduce_losses(losses, x.labels[: p.num_anchors], p)
    return loss.to(x.features.dtype), lse, pos, counted, *no_unit_gradients(lse)


def _backward(x: ContrastInputs, p: OpParams, lse, pos, counted, grad_loss, units, needs):
    needs = (needs[0], needs[1] and x.center_logits is not None, needs[2] and x.centers is not None)
    g = per_anchor_grad(grad_loss.to(lse.dtype), counted, p, p.num_anchors)
    grads = sweep_backward(normalized(x) if p.normalize else x, p, lse, pos, g, needs)
    return finish_gradients(x, p, grads, lse)


OPS = define_backend_ops(NAME, _forward, _backward)
EAGER = define_eager(NAME, _forward, _backward)
