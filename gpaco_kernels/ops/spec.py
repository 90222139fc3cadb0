"""The canonical inputs of the one op (see loss-spec.md) and the per-column weights every backend shares.

Every public loss is turned into a `ContrastInputs` (tensors) plus a `LossConfig` (scalars) by the functional
layer, after validation. Backends receive them already checked and canonical: labels int64, float tensors of
one dtype on one device, optional pieces either None or present with consistent shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossConfig:
    num_anchors: int  # A: rows 0..A-1 of features are the anchors
    temperature: float  # t, for batch and queue columns
    center_temperature: float  # tc, for the class block
    base_temperature: float  # tb; the loss is scaled by t / tb
    alpha: float  # weight of sample positives (batch and queue)
    beta: float  # weight of the class positive
    gamma: float  # denominator weight of batch and queue columns
    label_smoothing: float  # eps, spread over the C - 1 other classes
    exclude_positive_class: bool  # own class out of the denominator (PSC)
    ignore_index: int  # anchors with this label add no loss and are not counted
    batch_columns: bool = True  # False: batch rows are not contrast columns (PSC)
    lse_eps: float = 1e-12  # lse = m + log(Z + lse_eps); the published PaCo code adds 1e-12, SupCon adds nothing
    reduced: bool = False  # the per-anchor losses will be summed or averaged: one upstream gradient for all anchors

    @property
    def loss_scale(self) -> float:
        return -(self.temperature / self.base_temperature)


@dataclass(frozen=True)
class ContrastInputs:
    features: torch.Tensor  # (N, D) batch rows; rows 0..A-1 are anchors
    labels: torch.Tensor  # (N,) int64
    queue: torch.Tensor | None = None  # (K, D), never receives a gradient
    queue_labels: torch.Tensor | None = None  # (K,) int64
    center_logits: torch.Tensor | None = None  # (A, C) class logits S
    centers: torch.Tensor | None = None  # (C, D) class centers W, logits <F_i, W_c>
    center_bias: torch.Tensor | None = None  # (C,) log prior b, float, added before dividing by tc

    @property
    def num_classes(self) -> int:
        if self.center_logits is not None:
            return self.center_logits.shape[1]
        if self.centers is not None:
            return self.centers.shape[0]
        return 0


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for half inputs, the input dtype otherwise (float64 stays float64)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def class_block_weights(anchor_labels, class_ids, num_classes: int, cfg: LossConfig, dtype: torch.dtype):
    """Positive weight w and denominator weight d of anchors (R,) against classes (T,): two (R, T) tensors."""
    is_pos = anchor_labels[:, None] == class_ids[None, :]
    off = cfg.label_smoothing / (num_classes - 1) if num_classes > 1 else 0.0
    on = 1.0 - cfg.label_smoothing
    # Built in the compute dtype: torch.where on Python floats would round the weights to float32.
    w = torch.full(is_pos.shape, cfg.beta * off, dtype=dtype, device=is_pos.device).masked_fill_(is_pos, cfg.beta * on)
    d = (~is_pos).to(dtype) if cfg.exclude_positive_class else torch.ones_like(w)
    return w, d


def sample_weights(
    anchor_labels: torch.Tensor,
    col_labels: torch.Tensor,
    cfg: LossConfig,
    anchor_rows: torch.Tensor | None = None,
    col_rows: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
):
    """w and d of anchors (R,) against batch or queue columns (T,); pass row indices for batch columns so that
    an anchor's own column (same row of features) gets w = d = 0."""
    same = anchor_labels[:, None] == col_labels[None, :]
    if anchor_rows is None:
        w = same.to(dtype) * cfg.alpha
        d = torch.full_like(w, cfg.gamma)
        return w, d
    other = anchor_rows[:, None] != col_rows[None, :]
    w = (same & other).to(dtype) * cfg.alpha
    d = other.to(dtype) * cfg.gamma
    return w, d


def counted_anchors(anchor_labels: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Bool (A,): anchors that are not ignored (they count in 'mean' even without positives, as in SupCon)."""
    return anchor_labels != cfg.ignore_index
