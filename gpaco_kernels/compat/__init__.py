"""Drop-in replacements for the published loss modules: same constructor and forward signatures, one import to
change. Each also takes ``backend=`` (default 'auto').

    PaCoLoss      PaCo/LT/losses.py (ICCV 2021): features = [q; k; queue], anchors are the first (N - K) // 2 rows
    GPaCoLoss     GPaCo/LT/losses.py (TPAMI 2023): anchors are the first N - K rows, optional prior, smoothing
    GPaCoViTLoss  GPaCo/MAE-ViTs/paco.py: GPaCo with the ViT fine-tuning defaults and forward(..., smooth=0.1)
    PaCoSegLoss   GPaCo/Seg paco.py: every row (pixel) is an anchor, label == num_classes is ignored
    SupConLoss    Khosla et al.'s SupContrast losses.py

Known differences from the published code, none of which changes a loss value:
- the last K rows (the queue) get no gradient; the published code computes one and the training code discards it
  (the queue is a detached buffer);
- the prior from ``cal_weight_for_classes`` lives on the features' device instead of being moved to 'cuda';
- an anchor without any positive gets loss 0 where the published PaCo code divides 0 by 0.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .. import _checks as check
from ..functional import _paco_loss, fused_supcon_loss
from ..modules import ClassCountsState


class _PublishedPaCoBase(ClassCountsState):
    """Shared constructor, prior and argument handling of the three published PaCo-family modules."""

    # The published PaCo/LT and GPaCo/Seg signature; GPaCoLoss overrides the defaults it changes.
    def __init__(
        self,
        alpha,
        beta=1.0,
        gamma=1.0,
        supt=1.0,
        temperature=1.0,
        base_temperature=None,
        K=128,
        num_classes=1000,
        backend="auto",
    ):
        super().__init__()
        self.temperature = temperature
        self.base_temperature = temperature if base_temperature is None else base_temperature
        self.K = check.integer("K", K)
        if K < 0:
            raise ValueError(f"K (queue size) must be >= 0, got {K}")
        self.alpha, self.beta, self.gamma, self.supt = alpha, beta, gamma, supt
        self.num_classes = check.integer("num_classes", num_classes)
        self.backend = backend
        self.register_buffer("class_counts", None)

    @property
    def weight(self):
        """The class prior, as the published attribute of the same name (shape (1, C)); None before
        ``cal_weight_for_classes``."""
        if self.class_counts is None:
            return None
        return (self.class_counts / self.class_counts.sum()).view(1, -1)

    def cal_weight_for_classes(self, cls_num_list):
        """Set the rebalancing prior from the training-set count of each class."""
        self.class_counts = check.host_class_counts(cls_num_list, self.num_classes)

    def _flat_labels(self, features, labels, sup_logits, mask):
        check.tensor("features", features, floating=True)
        if labels is None:
            raise ValueError("labels is required (the published loss reads labels for the class block)")
        check.tensor("labels", labels, floating=False)
        if labels.numel() != features.shape[0]:
            raise ValueError(
                f"labels must have one entry per row of features ({features.shape[0]}), got shape {tuple(labels.shape)}"
            )
        if sup_logits is None:
            raise ValueError("sup_logits is required: the (anchors, num_classes) logits of the classifier head")
        check.tensor("sup_logits", sup_logits, floating=True)
        if sup_logits.dim() != 2 or sup_logits.shape[1] != self.num_classes:
            raise ValueError(
                f"sup_logits must have shape (anchors, num_classes={self.num_classes}), got {tuple(sup_logits.shape)}"
            )
        if mask is not None:
            warnings.warn(
                "mask is ignored, as in the published PaCo code (it builds the mask from labels)", stacklevel=3
            )
        return labels.reshape(-1)

    def extra_repr(self) -> str:
        names = ("alpha", "beta", "gamma", "supt", "temperature", "base_temperature", "K", "num_classes", "smooth")
        fields = [f"{name}={getattr(self, name)!r}" for name in names if hasattr(self, name)]
        prior = "none" if self.class_counts is None else f"{self.class_counts.numel()} class counts"
        return ", ".join(fields + [f"backend={self.backend!r}", f"prior={prior}"])

    def _check_anchor_rows(self, sup_logits, num_anchors, n_batch, sibling, sibling_anchors, layout):
        """A sup_logits row count that fits the sibling module's layout (PaCoLoss: [q; k; queue], the anchors are q;
        GPaCoLoss: [batch; queue], every batch row is an anchor) names that module."""
        rows = sup_logits.shape[0]
        if rows != num_anchors and rows == sibling_anchors:
            raise ValueError(
                f"sup_logits must have shape (anchors, num_classes) = ({num_anchors}, {self.num_classes}), got "
                f"{tuple(sup_logits.shape)}: {type(self).__name__} takes features as {layout}. Its {rows} rows are "
                f"one per anchor of gpaco_kernels.compat.{sibling}'s layout for these {n_batch} batch rows: use "
                f"{sibling} if that is the loss your code was written for"
            )

    def _loss(self, features, labels, sup_logits, num_anchors, *, center_temperature, queue_rows=None, **options):
        """The published call on the op: the last queue_rows rows (default K) of features are the queue."""
        K = self.K if queue_rows is None else queue_rows
        n_batch = features.shape[0] - K
        if K and n_batch < 1:  # without a queue, the op's own check names an empty features
            raise ValueError(f"features must have more than K={K} rows ([batch; queue]), got {features.shape[0]}")
        return _paco_loss(
            features[:n_batch],
            labels[:n_batch],
            num_anchors=num_anchors,
            queue=features[n_batch:] if K else None,
            queue_labels=labels[n_batch:] if K else None,
            center_logits=sup_logits,
            arg_names={"center_logits": "sup_logits"},
            alpha=self.alpha,
            beta=self.beta,
            gamma=self.gamma,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            center_temperature=center_temperature,
            backend=self.backend,
            **options,
        )


class PaCoLoss(_PublishedPaCoBase):
    """PaCo (ICCV 2021), PaCo/LT/losses.py. forward(features, labels, sup_logits): features (2B + K, D) are
    [q; k; queue], labels (2B + K,), sup_logits (B, C); the B rows of q are the anchors. Call
    ``cal_weight_for_classes`` first, as the published loss requires."""

    def forward(self, features, labels=None, sup_logits=None, mask=None, epoch=None):
        labels = self._flat_labels(features, labels, sup_logits, mask)
        if self.class_counts is None:
            raise RuntimeError("PaCoLoss needs the class prior: call cal_weight_for_classes(cls_num_list) first")
        n_batch = features.shape[0] - self.K
        num_anchors = n_batch // 2  # [q; k]: the anchors are q
        self._check_anchor_rows(sup_logits, num_anchors, n_batch, "GPaCoLoss", n_batch, "[q; k; queue] (anchors: q)")
        return self._loss(
            features, labels, sup_logits, num_anchors, center_temperature=self.supt, class_counts=self.class_counts
        )


class GPaCoLoss(_PublishedPaCoBase):
    """GPaCo (TPAMI 2023), GPaCo/LT/losses.py (published there as PaCoLoss). forward(features, labels,
    sup_logits): features (B' + K, D) are [batch; queue] and all B' batch rows are anchors; sup_logits (B', C).
    The prior is used only after ``cal_weight_for_classes``; ``smooth`` is label smoothing over the classes."""

    def __init__(
        self,
        alpha,
        beta=1.0,
        gamma=1.0,
        supt=1.0,
        temperature=1.0,
        base_temperature=None,
        K=8192,
        num_classes=1000,
        smooth=0.0,
        backend="auto",
    ):
        super().__init__(alpha, beta, gamma, supt, temperature, base_temperature, K, num_classes, backend)
        self.smooth = smooth

    def forward(self, features, labels=None, sup_logits=None, smooth=None):
        """smooth: label smoothing for this call (GPaCo/MAE-ViTs/paco.py takes it here); None: the constructor's."""
        labels = self._flat_labels(features, labels, sup_logits, None)
        num_anchors = features.shape[0] - self.K
        layout = "[batch; queue] (anchors: every batch row)"
        self._check_anchor_rows(sup_logits, num_anchors, num_anchors, "PaCoLoss", num_anchors // 2, layout)
        return self._loss(
            features,
            labels,
            sup_logits,
            num_anchors,
            center_temperature=self.supt,
            class_counts=self.class_counts,
            label_smoothing=self.smooth if smooth is None else smooth,
        )


class GPaCoViTLoss(GPaCoLoss):
    """GPaCo for ViTs, GPaCo/MAE-ViTs/paco.py (published there as PaCoLoss): GPaCoLoss with that file's defaults
    (alpha=0.05, temperature=0.2, K=8192) and label smoothing given to forward, default 0.1. The published module
    has no class prior; ``cal_weight_for_classes`` adds one, as in GPaCoLoss."""

    def __init__(
        self,
        alpha=0.05,
        beta=1.0,
        gamma=1.0,
        supt=1.0,
        temperature=0.2,
        base_temperature=None,
        K=8192,
        num_classes=1000,
        backend="auto",
    ):
        # smooth is forward's argument; self.smooth (shown in the repr) is its default there
        super().__init__(alpha, beta, gamma, supt, temperature, base_temperature, K, num_classes, 0.1, backend)

    def forward(self, features, labels=None, sup_logits=None, smooth=0.1):
        return super().forward(features, labels, sup_logits, smooth=smooth)


class PaCoSegLoss(_PublishedPaCoBase):
    """GPaCo pixel loss, GPaCo/Seg/mmseg/models/decode_heads/paco.py. forward(features, labels, sup_logits):
    features (N, D) sampled pixels, labels (N,), sup_logits (N, C). Every pixel is an anchor; label == num_classes
    marks an ignored pixel. As published, ``supt`` and ``K`` are accepted and not used (the class logits are not
    divided by supt), and the prior of ``cal_weight_for_classes`` is not applied."""

    def cal_weight_for_classes(self, cls_num_list):
        warnings.warn("PaCoSegLoss does not use a class prior (neither does the published pixel loss)", stacklevel=2)
        super().cal_weight_for_classes(cls_num_list)

    def forward(self, features, labels=None, sup_logits=None, mask=None, epoch=None):
        labels = self._flat_labels(features, labels, sup_logits, mask)
        # No queue (K is accepted and unused, as published), no supt, ignored pixels labelled num_classes.
        return self._loss(
            features, labels, sup_logits, None, center_temperature=1.0, queue_rows=0, ignore_index=self.num_classes
        )


class SupConLoss(nn.Module):
    """SupCon (Khosla et al. 2020), SupContrast losses.py. forward(features (bsz, n_views, ...), labels=None,
    mask=None). An explicit (bsz, bsz) ``mask`` can encode any positive relation, which labels cannot: that case
    runs the dense formula (memory O(N^2)) and warns."""

    def __init__(self, temperature=0.07, contrast_mode="all", base_temperature=0.07, backend="auto"):
        super().__init__()
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature
        self.backend = backend

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature!r}, contrast_mode={self.contrast_mode!r}, "
            f"base_temperature={self.base_temperature!r}, backend={self.backend!r}"
        )

    def forward(self, features, labels=None, mask=None):
        if labels is not None and mask is not None:
            raise ValueError("pass labels or mask, not both")
        check.tensor("features", features, floating=True)
        if features.dim() < 3:
            raise ValueError(f"features must have shape (bsz, n_views, ...), got {tuple(features.shape)}")
        if labels is not None:
            check.tensor("labels", labels, floating=False)
            labels = labels.reshape(-1)
        if mask is None:
            return fused_supcon_loss(
                features,
                labels,
                temperature=self.temperature,
                base_temperature=self.base_temperature,
                contrast_mode=self.contrast_mode,
                backend=self.backend,
            )
        warnings.warn(
            "SupConLoss with an explicit mask runs the dense O(N^2) formula, not a fused kernel", stacklevel=2
        )
        return _dense_supcon_with_mask(features, mask, self.temperature, self.base_temperature, self.contrast_mode)


def _dense_supcon_with_mask(features, mask, temperature, base_temperature, contrast_mode):
    """SupCon with an arbitrary (bsz, bsz) positive mask, written densely."""
    check.tensor("mask", mask)
    check.choice("contrast_mode", contrast_mode, ("all", "one"))
    bsz, n_views = features.shape[0], features.shape[1]
    check.shape("mask", mask, (bsz, bsz), lambda: f"(bsz, bsz) = ({bsz}, {bsz})")
    check.same_device("mask", mask, "features", features)
    contrast = features.reshape(bsz, n_views, -1).transpose(0, 1).reshape(bsz * n_views, -1)
    n_anchor_views = n_views if contrast_mode == "all" else 1
    anchors = contrast[: bsz * n_anchor_views]
    logits = anchors @ contrast.T / temperature
    logits = logits - logits.detach().max(dim=1, keepdim=True).values
    not_self = torch.ones_like(logits)
    rows = torch.arange(anchors.shape[0], device=features.device)
    not_self[rows, rows] = 0
    positives = mask.to(logits.dtype).repeat(n_anchor_views, n_views) * not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(dim=1, keepdim=True))
    n_pos = positives.sum(dim=1)
    n_pos = torch.where(n_pos < 1e-6, torch.ones_like(n_pos), n_pos)
    loss = -(temperature / base_temperature) * (positives * log_prob).sum(dim=1) / n_pos
    return loss.mean()
