"""Drop-in for pytorch-metric-learning's SupConLoss, on the fused op.

    from gpaco_kernels.compat.pml import SupConLoss
    loss_fn = SupConLoss(temperature=0.1)
    loss = loss_fn(embeddings, labels)                                  # every other row is a contrast column
    loss = loss_fn(embeddings, labels, ref_emb=memory, ref_labels=mem_labels)   # the rows of ref_emb are the columns

Same values and gradients as PML's SupConLoss with its defaults (cosine similarity, AvgNonZeroReducer): each anchor's
loss is the mean over its positives of -log softmax over its columns (itself excluded when ref_emb is None); anchors
without positives are left out of the mean, and with no positive or no negative pair at all the loss is 0. What PML
computes as an N x M matrix, this computes in tiles. Not supported, each refused with an error naming it: miners
(`indices_tuple`), other distances, reducers or regularizers, and a `ref_emb` that requires grad (the fused op's
reference rows take no gradient; pass `ref_emb.detach()`, as PML's CrossBatchMemory does with its memory).
"""

from __future__ import annotations

import torch
from torch import nn

from ..functional import _paco_loss


class SupConLoss(nn.Module):
    def __init__(self, temperature: float = 0.1, *, backend: str = "auto", **pml_options):
        super().__init__()
        if pml_options:
            names = ", ".join(sorted(pml_options))
            raise ValueError(
                f"gpaco_kernels.compat.pml.SupConLoss does not support PML's option(s) {names}: it computes PML's "
                f"defaults (cosine similarity, AvgNonZeroReducer, no regularizer) and takes temperature only"
            )
        self.temperature = temperature
        self.backend = backend

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        if indices_tuple is not None:
            raise ValueError("indices_tuple (a miner's pairs) is not supported: every pair is used, as without a miner")
        if (ref_emb is None) != (ref_labels is None):
            raise ValueError("pass ref_emb and ref_labels together, or neither")
        t = self.temperature
        options = dict(alpha=1.0, beta=0.0, gamma=1.0, temperature=t, base_temperature=t, normalize=True)
        options.update(lse_eps=0.0, reduction="none", backend=self.backend)
        if ref_emb is None:
            losses = _paco_loss(embeddings, labels, arg_names={"features": "embeddings"}, **options)
            all_labels = labels
        else:
            if ref_emb.requires_grad and torch.is_grad_enabled():
                raise ValueError(
                    "ref_emb requires grad, but its rows are contrast columns that take no gradient here; pass "
                    "ref_emb.detach() (PML's CrossBatchMemory detaches its memory too)"
                )
            losses = _paco_loss(
                embeddings, labels, queue=ref_emb, queue_labels=ref_labels, batch_columns=False,
                arg_names={"features": "embeddings", "queue": "ref_emb", "queue_labels": "ref_labels"}, **options,
            )  # fmt: skip
            all_labels = torch.cat([labels.reshape(-1), ref_labels.reshape(-1)])
        # PML returns 0 when there is no negative pair at all (every label the same); AvgNonZeroReducer averages
        # the losses > 0 (anchors without positives have 0). Both need a look at the values (a host sync).
        keep = losses > 0
        if all_labels.unique().numel() < 2 or not bool(keep.any()):
            return losses.sum() * 0.0
        return losses[keep].mean()
