"""gpaco_kernels.compat.pml against pytorch-metric-learning itself (a test dependency): values and gradients on the
cases PML supports, anchors without positives, no negatives, ref_emb as contrast columns; errors for what it refuses."""

from __future__ import annotations

import pytest
import pytorch_metric_learning.losses as pml_losses  # in the test extra: a missing PML fails, not skips
import torch

from gpaco_kernels.compat.pml import CrossBatchMemory, SupConLoss


def _both(embeddings, labels, temperature=0.1, **kw):
    out = []
    for loss_fn in (pml_losses.SupConLoss(temperature=temperature), SupConLoss(temperature=temperature)):
        e = embeddings.clone().requires_grad_()
        loss = loss_fn(e, labels, **kw)
        (grad,) = torch.autograd.grad(loss * 1.7, e, allow_unused=True)
        out.append((loss.detach(), torch.zeros_like(e) if grad is None else grad))
    return out


@pytest.mark.parametrize("n,classes,temperature", [(20, 4, 0.1), (33, 7, 0.07), (9, 2, 0.5), (64, 40, 0.2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_values_and_gradients_as_pml(n, classes, temperature, dtype):
    gen = torch.Generator().manual_seed(n)
    e = torch.randn(n, 16, generator=gen, dtype=dtype) * 3  # not normalized: PML's cosine similarity normalizes
    y = torch.randint(0, classes, (n,), generator=gen)  # with 40 classes in 64 rows: many anchors without positives
    (want, want_grad), (got, got_grad) = _both(e, y, temperature)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    torch.testing.assert_close(got_grad, want_grad, atol=tol, rtol=tol)


def test_ref_emb_are_the_contrast_columns():
    gen = torch.Generator().manual_seed(3)
    e, y = torch.randn(12, 8, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    ref, ref_y = torch.randn(40, 8, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    (want, want_grad), (got, got_grad) = _both(e, y, ref_emb=ref, ref_labels=ref_y)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3]])  # no negative pair; no positive pair
def test_degenerate_batches_give_pml_s_zero(labels):
    e = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    (want, _), (got, got_grad) = _both(e, torch.tensor(labels))
    assert float(want) == float(got) == 0.0 and not got_grad.any()


def test_what_is_not_supported_is_refused_by_name():
    e, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    with pytest.raises(ValueError, match="distance"):
        SupConLoss(temperature=0.1, distance=object())
    with pytest.raises(ValueError, match="indices_tuple"):
        SupConLoss()(e, y, indices_tuple=(y, y, y, y))
    with pytest.raises(ValueError, match="ref_emb and ref_labels together"):
        SupConLoss()(e, y, ref_emb=torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"ref_emb requires grad.*detach"):
        SupConLoss()(e, y, ref_emb=torch.randn(3, 4, requires_grad=True), ref_labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^ref_emb must have shape \(K, D\) with D = 4 as in embeddings"):
        SupConLoss()(e, y, ref_emb=torch.randn(3, 5), ref_labels=torch.zeros(3, dtype=torch.long))


def _memory_pair(embedding_size, memory_size, temperature=0.1):
    pml = pml_losses.CrossBatchMemory(pml_losses.SupConLoss(temperature=temperature), embedding_size, memory_size)
    ours = CrossBatchMemory(SupConLoss(temperature=temperature), embedding_size, memory_size)
    return pml, ours


def _step(module, e, y, **kw):
    e = e.clone().requires_grad_()
    loss = module(e, y, **kw)
    (grad,) = torch.autograd.grad(loss * 1.3, e, allow_unused=True)
    return loss.detach(), torch.zeros_like(e) if grad is None else grad


@pytest.mark.parametrize("batch,memory_size,classes", [(12, 50, 4), (7, 20, 3), (16, 16, 5), (30, 64, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_batch_memory_matches_pml_step_by_step(batch, memory_size, classes, dtype):
    """Steps before and after the memory fills and wraps (batch sizes that do not divide it): the same loss and
    gradient at every step and the same memory after it. 40 classes in 30 rows: many anchors without positives."""
    pml, ours = _memory_pair(8, memory_size)
    gen = torch.Generator().manual_seed(batch * memory_size)
    tol = 2e-5 if dtype == torch.float32 else 1e-10
    for step in range(2 * memory_size // batch + 2):
        rows = batch - step % 3  # the batch size varies too
        e = torch.randn(rows, 8, generator=gen, dtype=dtype) * 2
        y = torch.randint(0, classes, (rows,), generator=gen)
        want, want_grad = _step(pml, e, y)
        got, got_grad = _step(ours, e, y)
        torch.testing.assert_close(got, want, atol=tol, rtol=tol, msg=lambda m, s=step: f"loss at step {s}: {m}")
        torch.testing.assert_close(
            got_grad, want_grad, atol=tol, rtol=tol, msg=lambda m, s=step: f"grad at step {s}: {m}"
        )
        assert ours.queue_idx == pml.queue_idx and ours.has_been_filled == pml.has_been_filled
        torch.testing.assert_close(ours.embedding_memory, pml.embedding_memory, atol=0, rtol=0)
        assert torch.equal(ours.label_memory, pml.label_memory)


def test_cross_batch_memory_with_enqueue_mask_matches_pml():
    """The masked rows only go to the memory (e.g. a momentum encoder's keys), the others are the anchors."""
    pml, ours = _memory_pair(6, 40, temperature=0.2)
    gen = torch.Generator().manual_seed(5)
    for step in range(8):
        e = torch.randn(18, 6, generator=gen)
        y = torch.randint(0, 4, (18,), generator=gen)
        mask = torch.zeros(18, dtype=torch.bool)
        mask[step % 2 :: 2] = True  # 9 rows to memory, 9 anchors
        (want, want_grad), (got, got_grad) = _step(pml, e, y, enqueue_mask=mask), _step(ours, e, y, enqueue_mask=mask)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(got_grad, want_grad, atol=2e-5, rtol=2e-5)
        assert not got_grad[mask].any()  # rows that only go to the memory take no gradient
        torch.testing.assert_close(ours.embedding_memory, pml.embedding_memory, atol=0, rtol=0)


def test_cross_batch_memory_degenerate_steps_and_state_dict():
    e = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    for labels in ([1, 1, 1], [0, 1, 2]):  # first steps: every label the same (no negative); all distinct (no positive)
        pml, ours = _memory_pair(4, 10)
        (want, _), (got, got_grad) = _step(pml, e, torch.tensor(labels)), _step(ours, e, torch.tensor(labels))
        assert float(want) == float(got) == 0.0 and not got_grad.any()
    # PML's buffer names: a PML memory's state_dict loads, and the next step matches.
    fresh = CrossBatchMemory(SupConLoss(temperature=0.1), 4, 10)
    fresh.load_state_dict(pml.state_dict())
    fresh.queue_idx, fresh.has_been_filled = pml.queue_idx, pml.has_been_filled
    e2, y2 = torch.randn(5, 4, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 0, 2, 1])
    torch.testing.assert_close(_step(fresh, e2, y2), _step(pml, e2, y2), atol=2e-5, rtol=2e-5)


def test_cross_batch_memory_refuses_by_name():
    with pytest.raises(TypeError, match="loss must be a gpaco_kernels.compat.pml.SupConLoss.*pytorch_metric_learning"):
        CrossBatchMemory(pml_losses.SupConLoss(), 4)
    with pytest.raises(ValueError, match="miner"):
        CrossBatchMemory(SupConLoss(), 4, miner=object())
    memory = CrossBatchMemory(SupConLoss(), 4, memory_size=5)
    e, y = torch.randn(6, 4), torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match="embeddings has 6 rows, more than memory_size=5"):
        memory(e, y)
    with pytest.raises(ValueError, match=r"^embeddings must have shape \(B, 4\)"):
        memory(torch.randn(3, 5), y[:3])
    with pytest.raises(ValueError, match="indices_tuple"):
        memory(e[:3], y[:3], indices_tuple=(y, y, y, y))
    with pytest.raises(ValueError, match="enqueue_mask must be a bool tensor"):
        memory(e, y, enqueue_mask=torch.ones(6, dtype=torch.long))
    with pytest.raises(ValueError, match="enqueue_mask selects every row"):
        memory(e[:3], y[:3], enqueue_mask=torch.ones(3, dtype=torch.bool))


def test_one_positive_and_one_negative_pair_is_pml_s_zero():
    """PML's GenericPairLoss returns 0 when there is at most one positive and one negative pair."""
    gen = torch.Generator().manual_seed(4)
    e, ref = torch.randn(1, 8, generator=gen), torch.randn(2, 8, generator=gen)
    (want, _), (got, got_grad) = _both(e, torch.tensor([0]), ref_emb=ref, ref_labels=torch.tensor([0, 1]))
    assert float(want) == float(got) == 0.0 and not got_grad.any()
    # One more negative column and PML computes the loss: so do we.
    ref3, labels3 = torch.randn(3, 8, generator=gen), torch.tensor([0, 1, 2])
    (want, want_grad), (got, got_grad) = _both(e, torch.tensor([0]), ref_emb=ref3, ref_labels=labels3)
    assert float(want) > 0
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-5, rtol=1e-5)


def test_the_slots_a_write_keeps_are_found_from_the_ring_position_alone():
    """CrossBatchMemory finds the older slots without reading a value back: every (size, filled, start, count)
    against the set difference."""
    from gpaco_kernels.compat.pml import _kept_ranges

    for size in (1, 2, 5, 8):
        for filled in range(size + 1):
            for start in range(size):
                for count in range(size + 1):
                    overwritten = {(start + i) % size for i in range(count)}
                    want = [i for i in range(filled) if i not in overwritten]
                    got = [i for lo, hi in _kept_ranges(filled, start, count, size) for i in range(lo, hi)]
                    assert got == want, (size, filled, start, count)
