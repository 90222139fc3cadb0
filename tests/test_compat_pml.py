"""gpaco_kernels.compat.pml against pytorch-metric-learning itself (a test dependency): values and gradients on the
cases PML supports, anchors without positives, no negatives, ref_emb as contrast columns; errors for what it refuses."""

from __future__ import annotations

import pytest
import pytorch_metric_learning.losses as pml_losses  # in the test extra: a missing PML fails, not skips
import torch

from gpaco_kernels.compat.pml import SupConLoss


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
