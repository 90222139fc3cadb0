"""MomentumQueue: the ring buffer of past embeddings and labels that PaCo/GPaCo/MoCo contrast against."""

from __future__ import annotations

import torch
from torch import nn

from . import _checks as check


class MomentumQueue(nn.Module):
    """A ring buffer of ``size`` embeddings of dimension ``dim`` and their labels, kept as buffers (saved in the
    state_dict, moved by ``.to()``).

    ``enqueue(features, labels)`` writes any number of rows at the write position, wrapping around (no
    ``size % batch == 0`` requirement; a batch larger than the queue keeps its last ``size`` rows). With
    ``gather=True`` and torch.distributed initialized, the rows of every rank (in rank order) are enqueued on every
    rank, so the queues stay identical. ``get()`` returns ``(features, labels)`` of the filled slots only: until the
    queue is full, the empty slots are not returned and so can never count as positives or in a denominator.

        queue = MomentumQueue(8192, 128)
        queue_features, queue_labels = queue.get()      # empty at first: the loss then has no queue columns
        loss = fused_paco_loss(q, labels, queue=queue_features, queue_labels=queue_labels, ...)
        queue.enqueue(k.detach(), labels)
    """

    def __init__(self, size: int, dim: int, *, dtype=torch.float32, device=None, gather=False, process_group=None):
        super().__init__()
        check.integer("size", size)
        check.integer("dim", dim)
        if size < 1 or dim < 1:
            raise ValueError(f"size and dim must be positive, got size={size}, dim={dim}")
        self.size, self.dim, self.gather, self.process_group = size, dim, gather, process_group
        self.register_buffer("features", torch.zeros(size, dim, dtype=dtype, device=device))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long, device=device))
        self.register_buffer("position", torch.zeros((), dtype=torch.long, device=device))  # next slot to write
        self.register_buffer("filled", torch.zeros((), dtype=torch.long, device=device))  # slots holding data

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        check.tensor("features", features, floating=True)
        check.shape("features", features, (None, self.dim), f"(B, dim) with dim = {self.dim}")
        check.tensor("labels", labels, floating=False)
        check.shape("labels", labels, (features.shape[0],), f"(B,) = ({features.shape[0]},) to match features")
        if self.gather and torch.distributed.is_available() and torch.distributed.is_initialized():
            from .distributed import gather_rows

            features = gather_rows(features, self.process_group)
            labels = gather_rows(labels, self.process_group)
        rows = features.shape[0]
        if rows > self.size:  # only the newest rows fit
            features, labels = features[-self.size :], labels[-self.size :]
            rows = self.size
        start = int(self.position)
        slots = (torch.arange(rows, device=self.features.device) + start) % self.size
        self.features[slots] = features.detach().to(self.features.dtype)
        self.labels[slots] = labels.to(self.labels.device, torch.long)
        self.position.fill_((start + rows) % self.size)
        self.filled.fill_(min(int(self.filled) + rows, self.size))

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, labels) of the filled slots (all of them once the queue has wrapped)."""
        n = int(self.filled)
        return self.features[:n], self.labels[:n]

    def __len__(self) -> int:
        return int(self.filled)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, filled={int(self.filled)}, gather={self.gather}"
