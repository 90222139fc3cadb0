"""Two gloo processes equal one process over the global batch: loss (averaged over ranks), the gradient of a shared
parameter (averaged, as DDP does), and each rank's feature gradients; ranks hold different numbers of rows."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gpaco_kernels as gk

from helpers import assert_close

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

ROWS = (5, 8)  # rows per rank: unequal on purpose
D, C, K = 6, 4, 7


def _data():
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(sum(ROWS), D, generator=gen, dtype=torch.float64)
    weight = torch.randn(D, D, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, C, (sum(ROWS),), generator=gen)
    labels[3] = -100  # an ignored anchor on rank 0
    head = torch.randn(D, C, generator=gen, dtype=torch.float64)
    queue = torch.randn(K, D, generator=gen, dtype=torch.float64)
    queue_labels = torch.randint(0, C, (K,), generator=gen)
    return inputs, weight, labels, head, queue, queue_labels


def _losses(inputs, weight, labels, head, queue, queue_labels, backend, group):
    """A tiny model: features = inputs @ weight (shared parameter), class logits = features @ head."""
    feats = inputs @ weight
    paco = gk.fused_paco_loss(
        feats, labels, center_logits=feats @ head, queue=queue, queue_labels=queue_labels, alpha=0.5,
        temperature=0.3, label_smoothing=0.1, backend=backend, process_group=group,
    )  # fmt: skip
    views = torch.stack([feats, feats.flip(1)], dim=1)
    supcon = gk.SupConLoss(temperature=0.5, backend=backend, process_group=group)(views, labels.clamp(min=0))
    simclr = gk.fused_supcon_loss(views, None, temperature=0.5, backend=backend, process_group=group)
    return {"paco": paco, "supcon": supcon, "simclr": simclr}


def _worker(rank, world, init_file, out_dir, backend):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        inputs, weight, labels, head, queue, queue_labels = _data()
        lo, hi = sum(ROWS[:rank]), sum(ROWS[: rank + 1])
        results = {}
        for name in ("paco", "supcon", "simclr"):
            w = weight.clone().requires_grad_()
            x = inputs[lo:hi].clone().requires_grad_()
            loss = _losses(x, w, labels[lo:hi], head, queue, queue_labels, backend, dist.group.WORLD)[name]
            loss.backward()
            value, grad_w = loss.detach().clone(), w.grad.clone()
            dist.all_reduce(value)  # averaged over ranks below, as DDP averages gradients
            dist.all_reduce(grad_w)
            results[name] = dict(loss=value / world, grad_weight=grad_w / world, grad_rows=x.grad * 1.0)
        # The queue with gather=True: every rank enqueues all ranks' rows (rank order), so the queues agree.
        queue = gk.MomentumQueue(10, D, dtype=torch.float64, gather=True)
        queue.enqueue(inputs[lo:hi], labels[lo:hi])
        results["queue"] = queue.get()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_two_processes_equal_one_process_over_the_global_batch(tmp_path, backend):
    world = len(ROWS)
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path), backend), nprocs=world, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    inputs, weight, labels, head, queue, queue_labels = _data()
    # 13 gathered rows (rank 0's 5, then rank 1's 8) into 10 empty slots: the newest 10, rows 3..12, in order.
    q_feats, q_labels = per_rank[0]["queue"]
    assert torch.equal(q_feats, per_rank[1]["queue"][0]) and torch.equal(q_labels, per_rank[1]["queue"][1])
    assert torch.equal(q_feats, inputs[3:]) and torch.equal(q_labels, labels[3:])
    for name in ("paco", "supcon", "simclr"):
        w = weight.clone().requires_grad_()
        x = inputs.clone().requires_grad_()
        loss = _losses(x, w, labels, head, queue, queue_labels, backend, None)[name]
        loss.backward()
        for rank, res in enumerate(per_rank):
            r = res[name]
            assert_close(r["loss"], loss.detach(), atol=1e-12, rtol=1e-10, name=f"{name} loss (rank {rank})")
            assert_close(r["grad_weight"], w.grad, atol=1e-12, rtol=1e-10, name=f"{name} dweight (rank {rank})")
            lo, hi = sum(ROWS[:rank]), sum(ROWS[: rank + 1])
            # A rank's own-row gradient is of its share; DDP's average over ranks divides by the world size.
            assert_close(r["grad_rows"] / world, x.grad[lo:hi], atol=1e-12, rtol=1e-10, name=f"{name} drows {rank}")


def test_process_group_without_init_is_a_clear_error():
    with pytest.raises(ValueError, match="torch.distributed is not initialized"):
        gk.fused_paco_loss(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), process_group=object())
