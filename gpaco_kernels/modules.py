"""nn.Module wrappers: they hold hyperparameters (and, for PSC, the learnable prototypes) and call functional."""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _checks as check
from .functional import fused_paco_loss, fused_psc_loss, fused_supcon_loss
from .options import (
    PaCoOptions,
    PSCOptions,
    SupConOptions,
    as_kwargs,
    make_options,
    options_repr,
    with_option_parameters,
)


class ClassCountsState(nn.Module):
    """Holds ``class_counts`` (the training-set count of each class, or None) as a float64 buffer that survives what
    modules go through: ``.half()`` / ``.to(dtype)`` move it to the new device but keep float64 (float16 would turn a
    count of 70,000 into inf), and a state_dict with counts loads into a module built with or without them (one
    without counts has a None buffer, which the default loader would call an unexpected key). A state_dict without
    counts loaded strictly into a module with counts reports them missing, as for any buffer."""

    def _apply(self, fn, recurse=True):
        counts = self._buffers.get("class_counts")
        module = super()._apply(fn, recurse)
        if counts is not None:  # the device fn chose, the dtype and values as they were
            self._buffers["class_counts"] = counts.to(self._buffers["class_counts"].device)
        return module

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        counts = state_dict.get(prefix + "class_counts")
        if counts is not None:  # checked, and a buffer to load into (the loader then copies the same values)
            device = self.class_counts.device if self.class_counts is not None else torch.device("cpu")
            # num_classes: the compat modules know it (and check counts against it, as cal_weight_for_classes does)
            self.class_counts = check.host_class_counts(counts, getattr(self, "num_classes", None)).to(device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class FusedPaCoLoss(ClassCountsState):
    """Module form of :func:`fused_paco_loss`; its options (``PaCoOptions``: alpha, beta, gamma, temperature, ...,
    keyword-only, the functional's defaults) are held in ``self.options``. ``class_counts`` (optional) is kept as a
    buffer, so the prior moves with ``.to()`` and is saved in the state_dict; ``set_class_counts`` replaces it."""

    def __init__(self, *, class_counts=None, process_group=None, **options):
        super().__init__()
        self.process_group = process_group  # see fused_paco_loss: other ranks' batch rows become contrast columns
        self.options = make_options(PaCoOptions, "FusedPaCoLoss", options)
        self.register_buffer("class_counts", None)
        if class_counts is not None:
            self.set_class_counts(class_counts)

    def set_class_counts(self, class_counts) -> None:
        self.class_counts = check.host_class_counts(class_counts, None)

    def forward(
        self, features, labels, *, num_anchors=None, queue=None, queue_labels=None, center_logits=None, centers=None
    ):
        return fused_paco_loss(
            features,
            labels,
            num_anchors=num_anchors,
            queue=queue,
            queue_labels=queue_labels,
            center_logits=center_logits,
            centers=centers,
            class_counts=self.class_counts,
            process_group=self.process_group,
            **as_kwargs(self.options),
        )

    def extra_repr(self) -> str:
        return options_repr(self.options)


with_option_parameters(FusedPaCoLoss.__init__, PaCoOptions)


class SupConLoss(nn.Module):
    """Module form of :func:`fused_supcon_loss`: forward(features (bsz, n_views, D), labels=None); its options
    (``SupConOptions``) in ``self.options``. Every argument is keyword-only: the published module
    (``gpaco_kernels.compat.SupConLoss``) takes (temperature, contrast_mode, base_temperature) in that order, this
    one used to take (temperature, base_temperature, contrast_mode), and a positional call must not silently swap
    the two."""

    def __init__(self, *, process_group=None, **options):
        super().__init__()
        self.process_group = process_group  # see fused_supcon_loss
        self.options = make_options(SupConOptions, "SupConLoss", options)

    def forward(self, features, labels=None):
        return fused_supcon_loss(features, labels, process_group=self.process_group, **as_kwargs(self.options))

    def extra_repr(self) -> str:
        return options_repr(self.options)


with_option_parameters(SupConLoss.__init__, SupConOptions)


class PSCLoss(nn.Module):
    """Prototypical supervised contrastive loss (Wang et al. 2021) with its C learnable prototypes of size D.

    forward(features (N, D), labels (N,)). The prototypes are a parameter of this module: give it to the optimizer
    (it is in ``.parameters()``)."""

    def __init__(
        self,
        num_classes: int,
        dim: int,
        **options,
    ):
        super().__init__()
        check.integer("num_classes", num_classes)
        check.integer("dim", dim)
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be >= 1, got num_classes={num_classes}, dim={dim}")
        # Gaussian rows point in uniformly random directions; 1/sqrt(D) gives them about unit norm.
        self.prototypes = nn.Parameter(torch.randn(num_classes, dim) / math.sqrt(dim))
        self.options = make_options(PSCOptions, "PSCLoss", options)

    def forward(self, features, labels):
        return fused_psc_loss(features, labels, self.prototypes, **as_kwargs(self.options))

    def extra_repr(self) -> str:
        num_classes, dim = self.prototypes.shape
        return f"num_classes={num_classes}, dim={dim}, " + options_repr(self.options)


with_option_parameters(PSCLoss.__init__, PSCOptions)
