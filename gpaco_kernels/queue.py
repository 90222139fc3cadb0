"""MomentumQueue: the ring buffer of past embeddings and labels that PaCo/GPaCo/MoCo contrast against."""

from __future__ import annotations

import torch
from torch import nn

from . import _checks as check

INITS = ("empty", "random")


class MomentumQueue(nn.Module):
    """A ring buffer of ``size`` embeddings of dimension ``dim`` and their labels, kept as buffers (saved in the
    state_dict, moved by ``.to()``).

    ``enqueue(features, labels)`` writes any number of rows at the write position, wrapping around (no
    ``size % batch == 0`` requirement; a batch larger than the queue keeps its last ``size`` rows). With
    ``gather=True`` and torch.distributed initialized, the rows of every rank (in rank order) are enqueued on every
    rank, so the queues stay identical. ``get()`` returns ``(features, labels)`` of the filled slots, as copies, so
    that the keys may be enqueued before the loss's backward (``get(copy=False)``: views of the buffers).

    ``init``:

    - ``"empty"`` (default): the queue starts empty and ``get()`` returns only the filled slots, so empty slots never
      count as positives or in a denominator; its length grows with each enqueue until the queue is full.
    - ``"random"``: full from the start with random unit rows and random labels in ``[0, num_classes)``, as the
      published PaCo/GPaCo builders initialize their queues (they are pushed out by real rows after ``size`` rows).
      ``get()`` then always returns the whole buffer: one shape for every step, which a CUDA graph capture or a
      compiled step (torch.compile) needs.

    Under torch.compile a step that calls ``get()`` while the queue fills compiles about twice (the queue's length
    becomes dynamic after its first change), then never again.

    A step reads nothing back from the device: the write position lives on the device (the slots a batch goes to are
    computed there, so a captured enqueue writes the next slots at every replay), and the number of filled slots is
    also counted on the host from the batch sizes, which the host knows. Capture an ``"empty"`` queue only once it is
    full: a replay does not run Python, so it cannot grow what ``get()`` returned at capture.

        queue = MomentumQueue(8192, 128)
        queue_features, queue_labels = queue.get()      # empty at first: the loss then has no queue columns
        loss = fused_paco_loss(q, labels, queue=queue_features, queue_labels=queue_labels, ...)
        queue.enqueue(k.detach(), labels)
    """

    def __init__(
        self,
        size: int,
        dim: int,
        *,
        dtype=torch.float32,
        device=None,
        gather=False,
        process_group=None,
        init: str = "empty",
        num_classes: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        check.integer("size", size)
        check.integer("dim", dim)
        if size < 1 or dim < 1:
            raise ValueError(f"size and dim must be positive, got size={size}, dim={dim}")
        check.choice("init", init, INITS)
        if init == "random":
            if num_classes is None:
                raise ValueError("init='random' draws labels in [0, num_classes): pass num_classes")
            check.integer("num_classes", num_classes)
            if num_classes < 1:
                raise ValueError(f"num_classes must be positive, got {num_classes}")
        elif num_classes is not None:
            raise ValueError("num_classes is only used with init='random'")
        self.size, self.dim, self.gather, self.process_group = size, dim, gather, process_group
        if init == "random":
            rows = torch.randn(size, dim, generator=generator, dtype=torch.float64)
            features = nn.functional.normalize(rows, dim=1).to(device=device, dtype=dtype)
            labels = torch.randint(0, num_classes, (size,), generator=generator).to(device)
        else:
            features = torch.zeros(size, dim, dtype=dtype, device=device)
            labels = torch.full((size,), -1, dtype=torch.long, device=device)
        self.register_buffer("features", features)
        self.register_buffer("labels", labels)
        self.register_buffer("position", torch.zeros((), dtype=torch.long, device=device))  # next slot to write
        filled = size if init == "random" else 0
        self.register_buffer("filled", torch.full((), filled, dtype=torch.long, device=device))  # slots with data
        self._rows = _FilledRows()
        self._refresh(filled)

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        check.tensor("features", features, floating=True)
        check.shape("features", features, (None, self.dim), lambda: f"(B, dim) with dim = {self.dim}")
        check.tensor("labels", labels, floating=False)
        check.shape("labels", labels, (features.shape[0],), lambda: f"(B,) = ({features.shape[0]},) to match features")
        if self.gather and torch.distributed.is_available() and torch.distributed.is_initialized():
            from .distributed import gather_rows

            features = gather_rows(features, self.process_group)
            labels = gather_rows(labels, self.process_group)
        rows = features.shape[0]
        if rows > self.size:  # only the newest rows fit
            features, labels = features[-self.size :], labels[-self.size :]
            rows = self.size
        slots = (torch.arange(rows, device=self.features.device) + self.position) % self.size
        self.features.index_copy_(0, slots, features.detach().to(self.features.dtype))
        self.labels.index_copy_(0, slots, labels.to(self.labels.device, torch.long))
        self.position.copy_((self.position + rows) % self.size)
        filled = min(len(self) + rows, self.size)
        self.filled.fill_(filled)
        self._refresh(filled)

    def get(self, *, copy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, labels) of the filled slots (all of them once the queue has wrapped, or with init='random').

        copy=True (default) returns copies: the loss keeps its inputs for the backward, and an enqueue between the
        loss and its backward (as a step that enqueues the keys in its forward does, the MoCo builders' order) would
        otherwise change them in place, which autograd refuses. copy=False returns views of the buffers, for loops
        that enqueue only after the backward."""
        features, labels = self._rows.features, self._rows.labels
        return (_snapshot(features), _snapshot(labels)) if copy else (features, labels)

    def __len__(self) -> int:
        return self._rows.features.shape[0]

    def _refresh(self, filled) -> None:
        """Point the views of the filled slots at the buffers as they are now (after an enqueue, a .to() or .half(),
        a loaded checkpoint)."""
        self._rows.features = self.features[:filled]
        self._rows.labels = self.labels[:filled]

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        self._refresh(len(self))
        return module

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._refresh(int(self.filled))  # once, when a checkpoint is loaded

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, filled={len(self)}, gather={self.gather}"


@torch.library.custom_op("gpaco::queue_snapshot", mutates_args=())
def _snapshot(rows: torch.Tensor) -> torch.Tensor:
    """A copy of the filled rows, as an op torch.compile cannot see into. A plain clone() is cheap to recompute, so
    Inductor's partitioner recomputes it in the backward from the queue's buffer, which the enqueue of the same
    compiled step has by then overwritten: the backward of a loss that reads its queue again (the torch and triton
    backends) then got gradients from the new rows (off by 4e-3 in tests/test_training_loop.py, torch 2.13)."""
    return rows.clone()


@_snapshot.register_fake
def _(rows):
    return torch.empty_like(rows)


class _FilledRows:
    """The filled slots as views of the buffers, the queue's count on the host (the batch sizes are known there, so
    get() reads no value back from the device). Kept on a plain object, not the module: torch.compile gives a tensor
    read from a plain object's attribute a dynamic length once it has seen it change (automatic dynamic shapes), so a
    compiled step recompiles about twice while the queue fills; an int or tensor attribute of a module is specialized
    and would recompile it at every step until the queue is full."""

    features: torch.Tensor
    labels: torch.Tensor
