"""Numerics at the edges (large logits, half precision near its range, vanishing positives, C = 1, one anchor),
NaN propagation, and determinism: no NaN or inf where the float64 reference is finite, and no NaN hidden."""

from __future__ import annotations

import inspect

import pytest
import torch

import gpaco_kernels as gk
from gpaco_kernels.ops import available_backends

from helpers import assert_close

BACKENDS = [b for b in available_backends("cpu") if b != "reference"]
HALF = {"torch": [torch.bfloat16, torch.float16], "cpu": [torch.bfloat16, torch.float16], "triton": [torch.bfloat16]}


def _problem(n=12, d=8, c=5, k=9, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1) * scale
    return dict(
        features=feats,
        labels=torch.randint(0, c, (n,), generator=gen),
        queue=torch.nn.functional.normalize(torch.randn(k, d, generator=gen, dtype=torch.float64), dim=1) * scale,
        queue_labels=torch.randint(0, c, (k,), generator=gen),
        center_logits=torch.randn(n, c, generator=gen, dtype=torch.float64) * 5,
    )


def _loss_and_grads(kw, backend, dtype, **options):
    feats = kw["features"].detach().to(dtype).clone().requires_grad_()
    logits = kw["center_logits"].detach().to(dtype).clone().requires_grad_()
    args = dict(kw, features=feats, center_logits=logits, queue=kw["queue"].to(dtype))
    loss = gk.fused_paco_loss(**args, backend=backend, reduction="none", **options)
    loss.backward(torch.linspace(0.5, 1.5, loss.shape[0], dtype=torch.float64).to(dtype))
    return loss.detach(), feats.grad, logits.grad


def _check_finite_and_close(kw, backend, dtype, tol, **options):
    want = _loss_and_grads(kw, "reference", torch.float64, **options)
    assert all(torch.isfinite(t).all() for t in want), "the float64 reference itself is not finite here"
    got = _loss_and_grads(kw, backend, dtype, **options)
    for name, g, w in zip(("loss", "dfeatures", "dlogits"), got, want):
        assert torch.isfinite(g).all(), f"{backend} {dtype} {name}: NaN/inf where the float64 reference is finite"
        scale = 1.0 + w.abs().max().item()
        assert_close(g, w, atol=tol * scale, rtol=tol, name=f"{backend} {dtype} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_of_magnitude_100(backend):
    # Unit features at t = 0.01: sample logits up to 100, class logits / 0.05 up to ~300.
    kw = _problem()
    dtype, tol = (torch.float32, 1e-4) if backend == "triton" else (torch.float64, 1e-9)
    _check_finite_and_close(kw, backend, dtype, tol, temperature=0.01, center_temperature=0.05, alpha=0.5)
    _check_finite_and_close(kw, backend, torch.float32, 1e-4, temperature=0.01, center_temperature=0.05)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_near_its_range(backend):
    # |f| = 200: dot products of 40000, past float16's 65504 after the 1/t scale; accumulation is float32.
    kw = _problem(scale=200.0)
    for dtype in HALF[backend]:
        got = _loss_and_grads(kw, backend, dtype, temperature=1.0, alpha=0.2)
        want = _loss_and_grads(kw, "reference", torch.float64, temperature=1.0, alpha=0.2)
        assert torch.isfinite(want[0]).all()
        assert torch.isfinite(got[0].float()).all(), f"{backend} {dtype}: non-finite loss"
        assert all(torch.isfinite(g.float()).all() for g in got[1:]), f"{backend} {dtype}: non-finite gradient"


@pytest.mark.parametrize("backend", BACKENDS)
def test_positives_with_vanishing_probability(backend):
    # Every positive column points away from its anchor at t = 0.02: probabilities ~exp(-100).
    d = 4
    anchors = torch.eye(d, dtype=torch.float64)
    feats = torch.cat([anchors, -anchors])  # row i + 4 is the opposite of anchor i and shares its label
    labels = torch.arange(d).repeat(2)
    kw = dict(features=feats, labels=labels, num_anchors=d)
    dtype, tol = (torch.float32, 1e-4) if backend == "triton" else (torch.float64, 1e-9)
    want = gk.fused_paco_loss(**kw, temperature=0.02, backend="reference", reduction="none")
    got = gk.fused_paco_loss(**{**kw, "features": feats.to(dtype)}, temperature=0.02, backend=backend, reduction="none")
    assert torch.isfinite(want).all() and torch.isfinite(got).all()
    assert_close(got, want, atol=tol * (1 + want.abs().max().item()), rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", ["one class", "one anchor", "one row"])
def test_degenerate_sizes(backend, shape):
    kw = _problem(n=1 if shape == "one row" else 6, c=1 if shape == "one class" else 3, k=4)
    kw["labels"] = kw["labels"].clamp(max=kw["center_logits"].shape[1] - 1)
    dtype, tol = (torch.float32, 1e-4) if backend == "triton" else (torch.float64, 1e-9)
    options = dict(num_anchors=1) if shape == "one anchor" else {}
    if shape == "one anchor":
        kw["center_logits"] = kw["center_logits"][:1]
    _check_finite_and_close(kw, backend, dtype, tol, **options)


@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
@pytest.mark.parametrize("where", ["features", "queue", "center_logits"])
def test_nan_inputs_propagate_to_the_loss(backend, where):
    kw = _problem()
    dtype = torch.float32 if backend == "triton" else torch.float64
    kw = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    kw[where] = kw[where].clone()
    kw[where][2, 1] = float("nan")
    loss = gk.fused_paco_loss(**kw, backend=backend)
    assert torch.isnan(loss), f"{backend}: a NaN in {where} was hidden (loss {loss.item()})"


def test_cpu_backend_is_bitwise_reproducible_at_a_fixed_thread_count():
    kw = _problem(n=40, k=30)
    runs = [_loss_and_grads(kw, "cpu", torch.float32, alpha=0.3) for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_triton_kernels_use_no_atomics():
    paco = pytest.importorskip("gpaco_kernels.triton.paco")
    source = inspect.getsource(paco)
    assert "atomic" not in source.replace("no atomics", "").replace("without atomics", "").replace("No atomics", "")
