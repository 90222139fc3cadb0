"""Backend "reference": the loss written densely, differentiated by plain autograd.

It builds the whole A x (C + N + K) logit matrix, so it is the oracle of every test, not something to train with
at scale. It runs in float64 when given float64 inputs; half inputs are computed in float32. Being plain autograd,
it is also the one backend that supports double backward.
"""

from __future__ import annotations

import torch

from .spec import (
    ContrastInputs,
    OpParams,
    class_block_weights,
    compute_dtype,
    denominator_terms,
    finalize_loss,
    normalized,
    reduce_losses,
    sample_weights,
    weighted_logits,
)

NAME = "reference"


def availability():
    return None


def column_blocks(x: ContrastInputs, p: OpParams, dtype: torch.dtype):
    """Logits l, positive weights w and denominator weights d of every column, one (A, cols) triple per segment,
    in the order [class block | batch | queue]."""
    A = p.num_anchors
    feats = x.features.to(dtype)
    anchors, anchor_labels = feats[:A], x.labels[:A]
    blocks = []
    C = x.num_classes
    if C:
        if x.center_logits is not None:
            s = x.center_logits.to(dtype)
        else:
            s = anchors @ x.centers.to(dtype).T
        if x.center_bias is not None:
            s = s + x.center_bias.to(dtype)
        class_ids = torch.arange(C, device=feats.device)
        blocks.append((s / p.center_temperature, *class_block_weights(anchor_labels, class_ids, p, dtype)))
    if p.batch_columns:
        rows = torch.arange(feats.shape[0], device=feats.device)
        w, d = sample_weights(anchor_labels, x.labels, p, rows[:A], rows, dtype)
        columns = feats if p.batch_column_grad else feats.detach()
        blocks.append((anchors @ columns.T / p.temperature, w, d))
    if x.queue is not None and x.queue.shape[0] > 0:
        w, d = sample_weights(anchor_labels, x.queue_labels, p, dtype=dtype)
        # The queue is a memory of past embeddings: it never receives a gradient.
        blocks.append((anchors @ x.queue.detach().to(dtype).T / p.temperature, w, d))
    return blocks


def loss(x: ContrastInputs, p: OpParams) -> torch.Tensor:
    """The op's loss (reduced as p.reduction says) in the features' dtype."""
    losses = per_anchor_loss(normalized(x) if p.normalize else x, p)
    return reduce_losses(losses, x.labels[: p.num_anchors], p)[0].to(x.features.dtype)


def per_anchor_loss(x: ContrastInputs, p: OpParams) -> torch.Tensor:
    """Loss of each anchor, shape (A,), 0 for ignored anchors and anchors without positives."""
    dtype = compute_dtype(x.features.dtype)
    blocks = column_blocks(x, p, dtype)
    logits = torch.cat([b[0] for b in blocks], dim=1)
    w = torch.cat([b[1] for b in blocks], dim=1)
    d = torch.cat([b[2] for b in blocks], dim=1)
    # The max runs over every column, masked ones included, as in the published code: with lse_eps > 0 the shift
    # is not free, and this is the shift the published losses use.
    m = logits.detach().max(dim=1, keepdim=True).values
    lse = m.squeeze(1) + torch.log(denominator_terms(d, logits, m).sum(dim=1) + p.lse_eps)
    wl = weighted_logits(w, logits).sum(dim=1)
    return finalize_loss(wl, w.sum(dim=1), lse, x.labels[: p.num_anchors], p)
