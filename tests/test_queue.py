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
