"""torch.autograd.gradcheck in float64 through the public function, on the reference and torch backends."""

from __future__ import annotations

import pytest
import torch

import gpaco_kernels as gk

from helpers import need_backend

# These checks run in float64; Triton kernels are float32/bf16/fp16 and meet the oracles through test_backends.
FLOAT64_BACKENDS = ["reference", "torch", "cpu"]


def _inputs(seed, N=9, A=6, K=5, C=4, D=3):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(N, D, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, C, (N,), generator=gen)
    queue = torch.randn(K, D, generator=gen, dtype=torch.float64)
    queue_labels = torch.randint(0, C, (K,), generator=gen)
    return gen, feats, labels, queue, queue_labels


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
@pytest.mark.parametrize("normalize", [False, True])
def test_gradcheck_center_logits(backend, normalize, small_tiles):
    if backend != "reference":
        need_backend(backend)
    gen, feats, labels, queue, queue_labels = _inputs(0)
    logits = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)

    def fn(f, s):
        return gk.fused_paco_loss(
            f,
            labels,
            num_anchors=6,
            queue=queue,
            queue_labels=queue_labels,
            center_logits=s,
            class_counts=[4, 3, 2, 1],
            alpha=0.6,
            gamma=0.8,
            temperature=0.5,
            center_temperature=0.9,
            label_smoothing=0.1,
            normalize=normalize,
            reduction="none",
            backend=backend,
        )

    assert torch.autograd.gradcheck(fn, (feats, logits))


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("exclude", [False, True])
def test_gradcheck_centers(backend, normalize, exclude, small_tiles):
    if backend != "reference":
        need_backend(backend)
    gen, feats, labels, queue, queue_labels = _inputs(1)
    centers = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)

    def fn(f, w):
        return gk.fused_paco_loss(
            f,
            labels,
            queue=queue,
            queue_labels=queue_labels,
            centers=w,
            alpha=0.4,
            temperature=0.7,
            center_temperature=0.6,
            exclude_positive_class=exclude,
            normalize=normalize,
            backend=backend,
        )

    assert torch.autograd.gradcheck(fn, (feats, centers))


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
def test_gradcheck_supcon_and_psc(backend, small_tiles):
    if backend != "reference":
        need_backend(backend)
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(5, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1])
    assert torch.autograd.gradcheck(
        lambda f: gk.fused_supcon_loss(
            f, labels, temperature=0.5, base_temperature=0.5, normalize=True, backend=backend
        ),
        (feats,),
    )
    protos = torch.randn(3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    flat = feats[:, 0].detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f, p: gk.fused_psc_loss(f, labels, p, temperature=0.5, backend=backend, reduction="none"), (flat, protos)
    )
