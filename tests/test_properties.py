"""Property tests (hypothesis): every backend agrees with the float64 reference on random problems a user can reach,
and the loss has the invariances its formula promises."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpaco_kernels as gk

from helpers import BACKENDS, assert_close, need_backend

# Examples per property and backend: CI-sized (the interpreter makes each Triton example ~0.3 s).
EXAMPLES = {"torch": 40, "cpu": 60, "triton": 15}
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    """Keyword arguments of fused_paco_loss (float64) and the names of the leaves that take a gradient."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    n = draw(st.integers(1, 23))
    a = draw(st.integers(1, n))
    k = draw(st.sampled_from([0, 0, 1, 7, 19]))
    d = draw(st.integers(1, 9))
    block = draw(st.sampled_from(["logits", "centers", "none"]))
    c = draw(st.integers(1, 6))
    feats = torch.nn.functional.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)
    feats = feats * (0.5 + torch.rand(n, 1, generator=gen, dtype=torch.float64))
    if n > 2 and draw(st.booleans()):  # duplicate rows and a zero row
        feats[1] = feats[0]
        feats[-1] = 0.0
    labels = torch.randint(0, c, (n,), generator=gen)
    ignore = draw(st.sampled_from([0.0, 0.3, 1.0]))
    labels[torch.rand(n, generator=gen) < ignore] = -100
    kw = dict(
        features=feats,
        labels=labels,
        num_anchors=a,
        alpha=draw(st.sampled_from([0.0, 0.05, 1.0, 2.5])),
        gamma=draw(st.sampled_from([0.0, 0.5, 1.0])),
        temperature=math.exp(draw(st.floats(math.log(0.01), math.log(10.0)))),
        base_temperature=draw(st.sampled_from([None, 0.07, 1.0])),
    )
    grads = ["features"]
    if k:
        kw["queue"] = torch.nn.functional.normalize(torch.randn(k, d, generator=gen, dtype=torch.float64), dim=1)
        kw["queue_labels"] = torch.randint(0, c, (k,), generator=gen)
    if block != "none":
        kw["beta"] = draw(st.sampled_from([0.0, 1.0, 0.5]))
        kw["center_temperature"] = math.exp(draw(st.floats(math.log(0.05), math.log(5.0))))
        if c >= 2:
            kw["label_smoothing"] = draw(st.sampled_from([0.0, 0.1, 0.5]))
            kw["exclude_positive_class"] = draw(st.booleans())
        if draw(st.booleans()):
            kw["class_counts"] = torch.randint(1, 50, (c,), generator=gen)
        if block == "logits":
            kw["center_logits"] = torch.randn(a, c, generator=gen, dtype=torch.float64) * 3
            grads.append("center_logits")
        else:
            kw["centers"] = torch.randn(c, d, generator=gen, dtype=torch.float64)
            grads.append("centers")
    return kw, grads


def run(kw, grads, backend, dtype, reduction="none", upstream_seed=0):
    """Per-anchor losses (or the reduction) and the gradients for a non-uniform upstream gradient."""
    leaves = {k: kw[k].detach().to(dtype).requires_grad_() for k in grads}
    args = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kw.items()}
    loss = gk.fused_paco_loss(**{**args, **leaves}, backend=backend, reduction=reduction)
    # Drawn in float64 for every dtype (the same seed gives other numbers in float32).
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=torch.float64)
    loss.backward((upstream + 0.5).to(dtype))
    return loss.detach(), {k: v.grad for k, v in leaves.items()}


def compare(got, want, tol, name):
    loss, grads = got
    ref_loss, ref_grads = want
    scale = 1.0 + ref_loss.abs().max().item() if ref_loss.numel() else 1.0
    assert_close(loss, ref_loss, atol=tol * scale, rtol=tol, name=f"{name} loss")
    for k, g in grads.items():
        gscale = 1.0 + ref_grads[k].abs().max().item()
        assert_close(g, ref_grads[k], atol=tol * gscale, rtol=tol, name=f"{name} d{k}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_agrees_with_the_reference(backend):
    need_backend(backend)
    dtype, tol = (torch.float32, 2e-4) if backend == "triton" else (torch.float64, 1e-9)

    @settings(max_examples=EXAMPLES[backend], **SETTINGS)
    @given(problems())
    def check(problem):
        kw, grads = problem
        want = run(kw, grads, "reference", torch.float64)
        assert torch.isfinite(want[0]).all()
        got = run(kw, grads, backend, dtype)
        assert torch.isfinite(got[0]).all(), "non-finite loss where the float64 reference is finite"
        compare(got, want, tol, backend)

    check()


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_float32_agrees_with_the_float64_reference(backend):
    """The float32 paths (for the cpu backend: the SIMD row core, in whichever ISA clone this CPU runs, with the
    polynomial exp and the masked vector passes) on random problems, against float64."""
    need_backend(backend)

    @settings(max_examples=EXAMPLES[backend], **SETTINGS)
    @given(problems())
    def check(problem):
        kw, grads = problem
        want = run(kw, grads, "reference", torch.float64)
        got = run(kw, grads, backend, torch.float32)
        assert torch.isfinite(got[0]).all(), "non-finite loss where the float64 reference is finite"
        compare(got, want, 2e-4, f"{backend} float32")

    check()


@settings(max_examples=40, **SETTINGS)
@given(problems(), st.integers(0, 2**31 - 1))
def test_permuting_columns_with_their_labels_changes_nothing(problem, seed):
    kw, _ = problem
    gen = torch.Generator().manual_seed(seed)
    n, a = kw["features"].shape[0], kw["num_anchors"]
    # Batch rows after the anchors and queue rows are columns only: any order gives the same per-anchor losses.
    order = torch.cat([torch.arange(a), a + torch.randperm(n - a, generator=gen)])
    permuted = dict(kw, features=kw["features"][order], labels=kw["labels"][order])
    if "queue" in kw:
        q = torch.randperm(kw["queue"].shape[0], generator=gen)
        permuted.update(queue=kw["queue"][q], queue_labels=kw["queue_labels"][q])
    for backend in ["cpu", "torch", "reference"]:
        base = gk.fused_paco_loss(**kw, backend=backend, reduction="none")
        assert_close(gk.fused_paco_loss(**permuted, backend=backend, reduction="none"), base, atol=1e-11, rtol=1e-11)


@settings(max_examples=40, **SETTINGS)
@given(problems(), st.floats(0.01, 100.0))
def test_scaling_inputs_changes_nothing_under_normalize(problem, scale):
    kw, _ = problem
    kw = dict(kw)
    kw["features"] = kw["features"] + 1e-3  # no zero rows: normalizing those is 0/0 by definition
    scaled = dict(kw, features=kw["features"] * scale)
    if "queue" in kw:
        scaled["queue"] = kw["queue"] * (scale * 0.5)
    if "centers" in kw:
        scaled["centers"] = kw["centers"] * (scale * 2.0)
    base = gk.fused_paco_loss(**kw, normalize=True, reduction="none")
    assert_close(gk.fused_paco_loss(**scaled, normalize=True, reduction="none"), base, atol=1e-9, rtol=1e-9)


@settings(max_examples=40, **SETTINGS)
@given(st.integers(1, 12), st.integers(2, 6), st.sampled_from([0.0, 0.2]), st.integers(0, 1000))
def test_no_sample_weights_and_no_queue_is_the_class_only_loss(n, c, smoothing, seed):
    """alpha = gamma = 0 without a queue: only the class block is left, a label-smoothed softmax cross-entropy of
    S / tc (with the published eps / (C - 1) off-class weight). Unit features keep the masked self logit (1 / t),
    which the published max runs over, near the class logits, so the 1e-12 inside the log stays negligible."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen, dtype=torch.float64), dim=1)
    logits = torch.randn(n, c, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, c, (n,), generator=gen)
    t, tc = 0.3, 0.7
    got = gk.fused_paco_loss(
        feats, labels, center_logits=logits, alpha=0.0, gamma=0.0, temperature=t, center_temperature=tc,
        label_smoothing=smoothing, reduction="none",
    )  # fmt: skip
    log_p = torch.log_softmax(logits / tc, dim=1)
    target = torch.full((n, c), smoothing / (c - 1), dtype=torch.float64)
    target[torch.arange(n), labels] = 1 - smoothing
    assert_close(got, -(target * log_p).sum(1), atol=1e-9, rtol=1e-9)
