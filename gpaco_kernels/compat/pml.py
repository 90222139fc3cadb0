"""Drop-ins for pytorch-metric-learning's SupConLoss and CrossBatchMemory, on the fused op.

    from gpaco_kernels.compat.pml import CrossBatchMemory, SupConLoss
    loss_fn = SupConLoss(temperature=0.1)
    loss = loss_fn(embeddings, labels)                                  # every other row is a contrast column
    loss = loss_fn(embeddings, labels, ref_emb=memory, ref_labels=mem_labels)   # the rows of ref_emb are the columns
    memory_loss = CrossBatchMemory(loss_fn, embedding_size=128, memory_size=8192)
    loss = memory_loss(embeddings, labels)                      # the memory (this batch included) is the contrast set

Same values and gradients as PML with its defaults (cosine similarity, AvgNonZeroReducer): each anchor's loss is the
mean over its positives of -log softmax over its columns; anchors without positives are left out of the mean; with no
positive or no negative pair at all, or at most one of each, the loss is 0 (PML's rules). What PML computes as an
N x M matrix, this computes in tiles: CrossBatchMemory never builds the batch x memory matrix, which is what caps
PML's memory size.

Not supported, each refused with an error naming it: miners (`miner`, `indices_tuple`), other distances, reducers or
regularizers, and a `ref_emb` that requires grad (the fused op's reference rows take no gradient; pass
`ref_emb.detach()`, as CrossBatchMemory does with its memory). One known difference: PML's CrossBatchMemory keeps the
self-comparison of an anchor in a batch of one row (its index arithmetic misses that case); here an anchor is never
its own positive; and an enqueue_mask that selects no row marks PML's memory as filled (its zero rows then count
as columns), not here.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _checks as check
from ..functional import _paco_loss


class SupConLoss(nn.Module):
    """PML's SupConLoss(temperature): forward(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)."""

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

    def extra_repr(self) -> str:
        return f"temperature={self.temperature!r}, backend={self.backend!r}"

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        if indices_tuple is not None:
            raise ValueError("indices_tuple (a miner's pairs) is not supported: every pair is used, as without a miner")
        if (ref_emb is None) != (ref_labels is None):
            raise ValueError("pass ref_emb and ref_labels together, or neither")
        if ref_emb is None:
            # Every row is a column too, each anchor's own column left out (PML removes the diagonal).
            losses = self._per_anchor(embeddings, labels)
            return _reduce_like_pml(losses, labels, labels, self_pairs=labels.numel())
        if ref_emb.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "ref_emb requires grad, but its rows are contrast columns that take no gradient here; pass "
                "ref_emb.detach() (PML's CrossBatchMemory detaches its memory too)"
            )
        losses = self._per_anchor(embeddings, labels, ref_emb, ref_labels, batch_columns=False)
        return _reduce_like_pml(losses, labels, ref_labels, self_pairs=0)

    def _per_anchor(self, embeddings, labels, queue=None, queue_labels=None, *, batch_columns=True, **options):
        """The (A,) per-anchor losses of PML's formula: cosine logits / t, positives weighted 1, no class block, no
        1e-12 in the log. options go to the op (batch_column_grad for CrossBatchMemory)."""
        t = self.temperature
        return _paco_loss(
            embeddings, labels, queue=queue, queue_labels=queue_labels, batch_columns=batch_columns,
            alpha=1.0, beta=0.0, gamma=1.0, temperature=t, base_temperature=t, normalize=True,
            lse_eps=0.0, reduction="none", backend=self.backend,
            arg_names={"features": "embeddings", "queue": "ref_emb", "queue_labels": "ref_labels"}, **options,
        )  # fmt: skip


def _same_label_pairs(anchor_labels, column_labels) -> torch.Tensor:
    """The number of (anchor, column) pairs with the same label, as a tensor (no value read back): for each anchor,
    the width of its label's run in the sorted column labels."""
    columns = column_labels.reshape(-1).sort().values
    anchors = anchor_labels.reshape(-1).to(columns.dtype)
    return (torch.searchsorted(columns, anchors, right=True) - torch.searchsorted(columns, anchors)).sum()


def _reduce_like_pml(losses, anchor_labels, column_labels, *, self_pairs):
    """PML's reduction of the per-anchor losses, with its rules for degenerate batches: 0 (with zero gradients) when
    there is no positive pair or no negative pair, or at most one of each (GenericPairLoss); else the mean of the
    losses > 0 (AvgNonZeroReducer: anchors without positives have 0). self_pairs: the anchor-column pairs that are
    an anchor and itself, which PML does not count as positives. Computed on the device, without reading a value
    back (PML decides these cases on the host)."""
    same = _same_label_pairs(anchor_labels, column_labels)
    positive_pairs = same - self_pairs
    different = anchor_labels.numel() * column_labels.numel() - same
    keep = losses > 0
    kept = keep.sum()
    degenerate = (positive_pairs < 1) | (different < 1) | ((positive_pairs <= 1) & (different <= 1)) | (kept == 0)
    mean = torch.where(keep, losses, torch.zeros_like(losses)).sum() / kept.clamp(min=1)
    return torch.where(degenerate, losses.sum() * 0.0, mean)


def _kept_ranges(filled: int, start: int, count: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges, ascending, of the slots in [0, filled) outside the `count` ring slots from `start` (mod
    size) a write overwrites; always at least one (possibly empty) range."""
    end = start + count
    overwritten = [(start, min(end, size)), (0, max(0, end - size))]
    kept, lo = [], 0
    for a, b in sorted(overwritten):
        if b > a:
            if a > lo:
                kept.append((lo, min(a, filled)))
            lo = max(lo, b)
    kept.append((lo, filled))
    return [(a, b) for a, b in kept if b > a] or [(0, 0)]


class CrossBatchMemory(nn.Module):
    """PML's CrossBatchMemory(loss, embedding_size, memory_size=1024, miner=None) with this module's SupConLoss:
    forward(embeddings, labels, indices_tuple=None, enqueue_mask=None).

    Each call writes the batch (detached) into a ring buffer of ``memory_size`` rows and computes the loss of the
    batch's rows as anchors against the whole memory, the batch's own new slots included and each anchor's own slot
    left out, as PML does. With ``enqueue_mask`` (bool, one per row), the masked rows only go to the memory and the
    other rows are the anchors. The memory (``embedding_memory``, ``label_memory``) never takes a gradient; the
    anchors do. Without a mask a step reads no value back to the host (the ring position is host state); with one,
    the number of rows it selects sets shapes, so it is read (a synchronization on a GPU, as in PML). Buffers and
    attributes carry PML's names, so a PML state_dict loads.

    How it maps to the op: without a mask, the memory after the write is [this batch | the slots it did not
    overwrite], so the batch rows are the op's batch columns (self excluded, as detached copies:
    batch_column_grad=False) and the older slots its queue; with a mask, the memory is the queue and there are no
    batch columns."""

    def __init__(self, loss, embedding_size: int, memory_size: int = 1024, miner=None):
        super().__init__()
        if not isinstance(loss, SupConLoss):
            raise TypeError(
                f"loss must be a gpaco_kernels.compat.pml.SupConLoss (the fused memory supports that loss only), "
                f"got {type(loss).__module__}.{type(loss).__name__}"
            )
        if miner is not None:
            raise ValueError("miner is not supported: every anchor-memory pair is used, as without a miner")
        check.integer("embedding_size", embedding_size)
        check.integer("memory_size", memory_size)
        if embedding_size < 1 or memory_size < 1:
            raise ValueError(f"embedding_size and memory_size must be >= 1, got {embedding_size} and {memory_size}")
        self.loss = loss
        self.embedding_size, self.memory_size = embedding_size, memory_size
        self.reset_queue()

    def reset_queue(self) -> None:
        self.register_buffer("embedding_memory", torch.zeros(self.memory_size, self.embedding_size))
        self.register_buffer("label_memory", torch.zeros(self.memory_size, dtype=torch.long))
        self.has_been_filled = False
        self.queue_idx = 0

    def forward(self, embeddings, labels, indices_tuple=None, enqueue_mask=None):
        if indices_tuple is not None:
            raise ValueError("indices_tuple (a miner's pairs) is not supported: every anchor-memory pair is used")
        check.tensor("embeddings", embeddings, floating=True)
        check.shape("embeddings", embeddings, (None, self.embedding_size), lambda: f"(B, {self.embedding_size})")
        check.tensor("labels", labels, floating=False)
        batch = embeddings.shape[0]
        check.shape("labels", labels, (batch,), lambda: f"(B,) = ({batch},) to match embeddings")
        # As PML: the memory follows the embeddings' device and dtype.
        self.embedding_memory = self.embedding_memory.to(embeddings.device, embeddings.dtype)
        self.label_memory = self.label_memory.to(labels.device)
        if enqueue_mask is None:
            return self._batch_is_in_memory(embeddings, labels)
        return self._masked_rows_go_to_memory(embeddings, labels, enqueue_mask)

    def _batch_is_in_memory(self, embeddings, labels):
        batch = embeddings.shape[0]
        if batch > self.memory_size:
            raise ValueError(f"embeddings has {batch} rows, more than memory_size={self.memory_size}")
        slots = self._slots(batch)
        filled = self.memory_size if self.has_been_filled else self.queue_idx
        # The filled slots this batch does not overwrite, in slot order: ranges known from the ring position alone.
        ranges = _kept_ranges(filled, self.queue_idx, batch, self.memory_size)
        index = torch.cat([torch.arange(lo, hi, device=embeddings.device) for lo, hi in ranges])
        older = self.embedding_memory[:filled].index_select(0, index)
        older_labels = self.label_memory[:filled].index_select(0, index)
        losses = self.loss._per_anchor(embeddings, labels, older, older_labels, batch_column_grad=False)
        self._write(slots, embeddings, labels)
        columns = torch.cat([labels.reshape(-1), older_labels.to(labels.dtype)])
        return _reduce_like_pml(losses, labels, columns, self_pairs=batch)

    def _masked_rows_go_to_memory(self, embeddings, labels, enqueue_mask):
        check.tensor("enqueue_mask", enqueue_mask)
        if enqueue_mask.dtype != torch.bool:
            raise ValueError(f"enqueue_mask must be a bool tensor, got dtype {enqueue_mask.dtype}")
        check.shape("enqueue_mask", enqueue_mask, (embeddings.shape[0],), lambda: f"(B,) = ({embeddings.shape[0]},)")
        to_memory = int(enqueue_mask.sum())
        if to_memory > self.memory_size:
            raise ValueError(f"enqueue_mask selects {to_memory} rows, more than memory_size={self.memory_size}")
        if to_memory == embeddings.shape[0]:
            raise ValueError("enqueue_mask selects every row: no row is left as an anchor")
        self._write(self._slots(to_memory), embeddings[enqueue_mask], labels[enqueue_mask])
        filled = self.memory_size if self.has_been_filled else self.queue_idx
        memory, memory_labels = self.embedding_memory[:filled], self.label_memory[:filled]
        anchors, anchor_labels = embeddings[~enqueue_mask], labels[~enqueue_mask]
        if filled == 0:  # nothing to contrast with yet: no pairs, PML's 0
            return anchors.sum() * 0.0
        losses = self.loss._per_anchor(anchors, anchor_labels, memory, memory_labels, batch_columns=False)
        return _reduce_like_pml(losses, anchor_labels, memory_labels, self_pairs=0)

    def _slots(self, rows: int) -> torch.Tensor:
        return (torch.arange(rows, device=self.embedding_memory.device) + self.queue_idx) % self.memory_size

    @torch.no_grad()
    def _write(self, slots, embeddings, labels) -> None:
        self.embedding_memory[slots] = embeddings.detach()
        self.label_memory[slots] = labels.to(self.label_memory.dtype)
        previous = self.queue_idx
        self.queue_idx = (self.queue_idx + slots.numel()) % self.memory_size
        if not self.has_been_filled and slots.numel() > 0 and self.queue_idx <= previous:
            self.has_been_filled = True

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, memory_size={self.memory_size}, queue_idx={self.queue_idx}"
