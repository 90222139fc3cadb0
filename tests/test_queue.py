"""MomentumQueue: wraparound with any batch size, partial fill never counted, state_dict round trip, input checks."""

from __future__ import annotations

import pytest
import torch

import gpaco_kernels as gk

from helpers import assert_close


def test_wraparound_with_batches_that_do_not_divide_the_size():
    queue = gk.MomentumQueue(7, 2)
    written = []
    for step, rows in enumerate([3, 3, 3, 5]):
        feats = torch.arange(rows * 2, dtype=torch.float32).view(rows, 2) + 100 * step
        labels = torch.arange(rows) + 10 * step
        queue.enqueue(feats, labels)
        written += list(zip(feats.unbind(), labels.tolist()))
    # 14 rows into 7 slots: the newest 7 survive, each in slot (write index mod 7).
    expected = {i % 7: row for i, row in enumerate(written)}
    feats, labels = queue.get()
    assert len(queue) == 7 and int(queue.position) == 14 % 7
    for slot, (f, label) in expected.items():
        assert torch.equal(feats[slot], f) and labels[slot].item() == label


def test_a_batch_larger_than_the_queue_keeps_its_newest_rows():
    queue = gk.MomentumQueue(4, 1)
    queue.enqueue(torch.arange(10.0).view(10, 1), torch.arange(10))
    feats, labels = queue.get()
    assert sorted(labels.tolist()) == [6, 7, 8, 9] and sorted(feats.view(-1).tolist()) == [6.0, 7.0, 8.0, 9.0]


def test_partly_filled_queue_is_exactly_the_rows_written():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    logits = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    queue = gk.MomentumQueue(100, 4, dtype=torch.float64)
    # Empty: no queue columns at all (same as queue=None).
    q, ql = queue.get()
    empty = gk.fused_paco_loss(feats, labels, center_logits=logits, queue=q, queue_labels=ql, backend="reference")
    assert_close(empty, gk.fused_paco_loss(feats, labels, center_logits=logits, backend="reference"), atol=0, rtol=0)
    # 5 of 100 slots: the 95 empty ones (zero rows, label -1) must not enter the denominator or the positives.
    extra = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    extra_labels = torch.tensor([0, 0, 1, 2, 1])
    queue.enqueue(extra, extra_labels)
    q, ql = queue.get()
    got = gk.fused_paco_loss(feats, labels, center_logits=logits, queue=q, queue_labels=ql, backend="reference")
    want = gk.fused_paco_loss(
        feats, labels, center_logits=logits, queue=extra, queue_labels=extra_labels, backend="reference"
    )
    assert_close(got, want, atol=0, rtol=0)


def test_state_dict_round_trip_restores_contents_and_position():
    queue = gk.MomentumQueue(5, 3)
    queue.enqueue(torch.randn(4, 3), torch.tensor([1, 2, 3, 4]))
    restored = gk.MomentumQueue(5, 3)
    restored.load_state_dict(queue.state_dict())
    for a, b in zip(queue.get(), restored.get()):
        assert torch.equal(a, b)
    assert int(restored.position) == 4 and len(restored) == 4
    restored.enqueue(torch.randn(3, 3), torch.tensor([5, 6, 7]))  # wraps from the restored position
    assert len(restored) == 5 and int(restored.position) == 2


@pytest.mark.parametrize(
    "feats, labels, match",
    [
        (torch.randn(2, 4), torch.tensor([0, 1]), r"features must have shape \(B, dim\) with dim = 3"),
        (torch.randn(2, 3), torch.tensor([0, 1, 2]), r"labels must have shape \(B,\) = \(2,\)"),
        (torch.randn(2, 3), torch.tensor([0.0, 1.0]), "labels"),
    ],
)
def test_bad_enqueue_names_the_argument(feats, labels, match):
    queue = gk.MomentumQueue(5, 3)
    with pytest.raises((ValueError, TypeError), match=match):
        queue.enqueue(feats, labels)
    assert len(queue) == 0


def test_bad_construction():
    with pytest.raises(ValueError, match="size and dim must be positive"):
        gk.MomentumQueue(0, 3)


def _gpaco_step_with_the_queue(queue, device, backend="torch"):
    """One GPaCo step as a training loop writes it: the loss against queue.get(), then the keys enqueued."""
    feats = torch.randn(8, 4, device=device).requires_grad_()
    logits = torch.randn(8, 3, device=device).requires_grad_()
    labels = torch.randint(0, 3, (8,), device=device)
    q, ql = queue.get()
    loss = gk.fused_paco_loss(
        feats, labels, queue=q, queue_labels=ql, center_logits=logits, alpha=0.05, normalize=True, backend=backend
    )
    torch.autograd.grad(loss, [feats, logits])
    queue.enqueue(feats.detach(), labels)
    return q.shape


@pytest.mark.parametrize("init", ["empty", "random"])
def test_a_step_with_enqueue_and_get_reads_nothing_back(init):
    """On meta tensors (a value read raises or is counted there, tools.launch_count): get() and enqueue() take no
    host read, so a step with the queue needs no stream synchronization on a GPU and can be captured."""
    from tools.launch_count import StepTrace

    kw = dict(num_classes=3) if init == "random" else {}
    queue = gk.MomentumQueue(20, 4, device="meta", init=init, **kw)
    for _ in range(4):  # filling, then wrapping (8 rows a step into 20 slots)
        with StepTrace() as trace:
            _gpaco_step_with_the_queue(queue, "meta")
        assert trace.reads == 0, trace.summary()
    assert len(queue) == 20


def test_a_randomly_initialized_queue_has_one_shape_and_the_published_start():
    """init='random' (as the published PaCo/GPaCo builders): full from the start, so every step sees the same shapes;
    unit rows, labels in [0, num_classes), pushed out by real rows in order."""
    gen = torch.Generator().manual_seed(0)
    queue = gk.MomentumQueue(20, 4, init="random", num_classes=3, generator=gen)
    feats, labels = queue.get()
    assert feats.shape == (20, 4) and len(queue) == 20
    assert_close(feats.norm(dim=1), torch.ones(20), atol=1e-6, rtol=0, name="row norms")
    assert labels.min() >= 0 and labels.max() < 3
    shapes = {_gpaco_step_with_the_queue(queue, "cpu") for _ in range(4)}
    assert shapes == {(20, 4)}
    rows = torch.arange(12.0).view(3, 4)
    queue.enqueue(rows, torch.tensor([0, 1, 2]))  # after 32 rows, slots 12, 13, 14
    assert torch.equal(queue.get()[0][12:15], rows) and int(queue.position) == 15


def test_the_host_count_follows_a_loaded_checkpoint():
    full = gk.MomentumQueue(5, 2, init="random", num_classes=2)
    empty = gk.MomentumQueue(5, 2)
    empty.load_state_dict(full.state_dict())
    assert len(empty) == 5 and empty.get()[0].shape == (5, 2)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(init="full"), r"init must be one of"),
        (dict(init="random"), r"init='random' draws labels in \[0, num_classes\): pass num_classes"),
        (dict(init="random", num_classes=0), r"num_classes must be positive, got 0"),
        (dict(num_classes=3), r"num_classes is only used with init='random'"),
    ],
)
def test_bad_init_names_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        gk.MomentumQueue(5, 3, **kw)
