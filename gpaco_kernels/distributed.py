"""Contrast columns across processes (torch.distributed; gloo on CPU, nccl on GPU).

With a process group, every rank's anchors are contrasted with the batch rows of all ranks: each rank gathers the
others' features and labels and puts them after its own rows (its anchors and their self-columns keep their indices).
The gather is differentiable: the gradient a rank's loss sends to another rank's rows is summed at their owner, so
that with gradients averaged over ranks, as DistributedDataParallel does, a step equals one process over the global
batch (see `ddp_scale`). Ranks may hold different numbers of rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _rank_and_world(group):
    return dist.get_rank(group), dist.get_world_size(group)


def _gather_padded(tensor: torch.Tensor, group) -> list[torch.Tensor]:
    """Every rank's tensor (first dims may differ), in rank order. Collective: all ranks must call it."""
    _, world = _rank_and_world(group)
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s.item()) for s in sizes]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return [part[:n] for part, n in zip(parts, sizes)]


def _own_first(parts: list[torch.Tensor], rank: int) -> torch.Tensor:
    return torch.cat([parts[rank], *parts[:rank], *parts[rank + 1 :]])


class _GatherRows(torch.autograd.Function):
    """Forward: [own rows; other ranks' rows in rank order]. Backward: each rank's gradient for the whole gathered
    tensor is summed over ranks (all_reduce) and every rank keeps the part for its own rows."""

    @staticmethod
    def forward(ctx, tensor, group):
        rank, _ = _rank_and_world(group)
        parts = _gather_padded(tensor, group)
        ctx.group, ctx.rank, ctx.sizes = group, rank, [p.shape[0] for p in parts]
        return _own_first(parts, rank)

    @staticmethod
    def backward(ctx, grad):
        rank, sizes = ctx.rank, ctx.sizes
        own, others = grad[: sizes[rank]], grad[sizes[rank] :]
        # Back to rank order, so that row blocks line up across ranks for the sum.
        before = sum(sizes[:rank])
        ordered = torch.cat([others[:before], own, others[before:]]).contiguous()
        dist.all_reduce(ordered, op=dist.ReduceOp.SUM, group=ctx.group)
        return ordered[before : before + sizes[rank]], None


def gather_columns(features: torch.Tensor, labels: torch.Tensor, group=None):
    """(features, labels) of all ranks with this rank's rows first; gradients reach every rank's own rows."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("process_group was given but torch.distributed is not initialized (call init_process_group)")
    feats = _GatherRows.apply(features, group)
    all_labels = _own_first(_gather_padded(labels, group), dist.get_rank(group))
    return feats, all_labels


def gather_rows(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """All ranks' rows in rank order, without gradient (for the momentum queue)."""
    return torch.cat(_gather_padded(tensor.detach(), group))


def ddp_scale(local_total: torch.Tensor, local_count: torch.Tensor, reduction: str, group) -> torch.Tensor:
    """This rank's share of a 'mean' or 'sum' loss, scaled so that averaging the shares over ranks (as DDP averages
    gradients) gives the loss of one process over all ranks' anchors: world * local_sum / global_count for 'mean',
    world * local_sum for 'sum'. The returned value is a share, not this rank's own mean."""
    _, world = _rank_and_world(group)
    if reduction == "sum":
        return local_total * world
    count = local_count.detach().clone().to(torch.float64)
    dist.all_reduce(count, op=dist.ReduceOp.SUM, group=group)
    return local_total * world / count.clamp(min=1).to(local_total.dtype)
