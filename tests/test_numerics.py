"""Numerics at the edges, on every backend against the float64 reference: large logits, logits far below zero,
class logits of -inf (whole tiles and column splits of them), half precision near its range, float16 gradients as
small as a mean over 65536 anchors gives, vanishing positives, C = 1, one anchor; NaN propagation; double backward;
determinism. No NaN or inf where the float64 reference is finite, and no NaN hidden."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

import gpaco_kernels as gk

from helpers import (
    BACKENDS,
    DTYPES,
    GPU,
    HALF,
    assert_close,
    assert_within,
    backend_device,
    backend_params,
    need_backend,
    to_device,
)


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


def _work_dtype(backend):
    return torch.float32 if backend == "triton" else torch.float64


def _loss_and_grads(kw, backend, dtype, upstream=None, **options):
    """Loss ('none') and the gradients of features and class logits, on the device of the backend's tests."""
    device = backend_device(backend)
    kw = to_device(kw, device)
    feats = kw["features"].detach().to(dtype).clone().requires_grad_()
    logits = kw["center_logits"].detach().to(dtype).clone().requires_grad_()
    args = dict(kw, features=feats, center_logits=logits, queue=kw["queue"].to(dtype))
    loss = gk.fused_paco_loss(**args, backend=backend, reduction="none", **options)
    if upstream is None:
        upstream = torch.linspace(0.5, 1.5, loss.shape[0], dtype=torch.float64)
    loss.backward(upstream.to(device, dtype))
    return loss.detach(), feats.grad, logits.grad


def _check_finite_and_close(kw, backend, dtype, tol, **options):
    want = _loss_and_grads(kw, "reference", torch.float64, **options)
    assert all(torch.isfinite(t).all() for t in want), "the float64 reference itself is not finite here"
    got = _loss_and_grads(kw, backend, dtype, **options)
    for name, g, w in zip(("loss", "dfeatures", "dlogits"), got, want):
        assert torch.isfinite(g).all(), f"{backend} {dtype} {name}: NaN/inf where the float64 reference is finite"
        scale = 1.0 + w.abs().max().item()
        assert_close(g, w, atol=tol * scale, rtol=tol, name=f"{backend} {dtype} {name}")


@pytest.mark.parametrize("backend", backend_params())
def test_logits_of_magnitude_100(backend):
    need_backend(backend, backend_device(backend))
    # Unit features at t = 0.01: sample logits up to 100, class logits / 0.05 up to ~300.
    kw = _problem()
    dtype, tol = (torch.float32, 1e-4) if backend == "triton" else (torch.float64, 1e-9)
    _check_finite_and_close(kw, backend, dtype, tol, temperature=0.01, center_temperature=0.05, alpha=0.5)
    _check_finite_and_close(kw, backend, torch.float32, 1e-4, temperature=0.01, center_temperature=0.05)


@pytest.mark.parametrize("tiles", ["default", "small"])
@pytest.mark.parametrize("backend", backend_params())
def test_logits_far_below_zero(backend, tiles, request):
    """PSC with every prototype pointing away from every sample at t = 0.01: all logits near -100, so the running
    max is below -88 and exp(0 - max) overflows float32. Columns masked out (the tile's padding past the last
    prototype, the excluded own class) must still add exactly 0."""
    need_backend(backend, backend_device(backend))
    if tiles == "small":
        request.getfixturevalue("small_tiles")
    gen = torch.Generator().manual_seed(3)
    d, c = 8, 5
    axis = torch.zeros(d, dtype=torch.float64)
    axis[0] = 1.0
    prototypes = axis + 0.05 * torch.randn(c, d, generator=gen, dtype=torch.float64)
    feats = -axis + 0.05 * torch.randn(11, d, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, c, (11,), generator=gen)
    upstream = torch.linspace(-1.0, 2.0, 11, dtype=torch.float64)
    for exclude in (True, False):
        results = {}
        for name, dtype in (("reference", torch.float64), (backend, _work_dtype(backend))):
            device = backend_device(name)
            f = feats.to(device, dtype).requires_grad_()
            w = prototypes.to(device, dtype).requires_grad_()
            loss = gk.fused_psc_loss(
                f, labels.to(device), w, temperature=0.01, exclude_positive_class=exclude, reduction="none",
                backend=name,
            )  # fmt: skip
            results[name] = (loss, *torch.autograd.grad(loss, [f, w], upstream.to(device, dtype)))
        logits = torch.nn.functional.normalize(feats, dim=1) @ torch.nn.functional.normalize(prototypes, dim=1).T
        assert logits.max() / 0.01 < -95  # the regime of the test
        tol = 1e-4 if backend == "triton" else 1e-9
        for out, g, want in zip(("loss", "dfeatures", "dprototypes"), results[backend], results["reference"]):
            assert torch.isfinite(want).all()
            assert torch.isfinite(g).all(), f"{backend} exclude={exclude} {out}: NaN/inf"
            assert_close(g, want, atol=tol * (1 + want.abs().max().item()), rtol=tol, name=f"{out} exclude={exclude}")


@pytest.mark.parametrize("tiles", ["default", "small"])
@pytest.mark.parametrize("backend", backend_params())
def test_class_logits_of_minus_inf(backend, tiles, request):
    """Classes masked by a -inf logit (the first 20 of 40, every anchor's own class finite): with small tiles
    whole tiles, and a whole column split, hold only -inf. The loss and gradients stay finite and match the
    reference (masked classes take no gradient)."""
    need_backend(backend, backend_device(backend))
    if tiles == "small":
        request.getfixturevalue("small_tiles")
    kw = _problem(n=14, c=40, k=6, seed=2)
    kw["labels"] = 20 + kw["labels"] % 20
    kw["queue_labels"] = 20 + kw["queue_labels"] % 20
    kw["center_logits"][:, :20] = float("-inf")
    for dtype in {_work_dtype(backend), torch.float32}:
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        _check_finite_and_close(kw, backend, dtype, tol, alpha=0.5, class_counts=torch.arange(1, 41))
    got = _loss_and_grads(kw, backend, torch.float32)
    assert torch.all(got[2][:, :20] == 0), "a class with a -inf logit took a gradient"


@pytest.mark.parametrize("backend", backend_params())
def test_half_precision_near_its_range(backend):
    need_backend(backend, backend_device(backend))
    # |f| = 200: dot products of 40000, past float16's 65504 after the 1/t scale; accumulation is float32.
    kw = _problem(scale=200.0)
    options = dict(temperature=1.0, alpha=0.2)
    truth = _loss_and_grads(kw, "reference", torch.float64, **options)
    assert all(torch.isfinite(t).all() for t in truth)
    for dtype in [d for d in DTYPES[backend] if d in HALF]:
        ref = _loss_and_grads(kw, "reference", dtype, **options)
        got = _loss_and_grads(kw, backend, dtype, **options)
        for name, g, t, r in zip(("loss", "dfeatures", "dlogits"), got, truth, ref):
            assert_within(g, t, r, backend, dtype, name=name)


@pytest.mark.parametrize("backend", backend_params())
def test_float16_gradients_of_a_mean_over_65536_anchors(backend):
    """The upstream gradient of each anchor after a mean over 65536 anchors is 2^-16; times the softmax over ~1100
    columns at t = 1 the per-column gradient terms are ~1e-8, below float16's smallest subnormal (6e-8). Gradients
    must keep their scale: the per-anchor factor belongs outside any float16 product."""
    need_backend(backend, backend_device(backend))
    kw = _problem(n=96, d=16, c=7, k=1000, seed=5)
    upstream = torch.full((96,), 2.0**-16, dtype=torch.float64)
    options = dict(temperature=1.0, alpha=0.5)
    truth = _loss_and_grads(kw, "reference", torch.float64, upstream=upstream, **options)
    ref = _loss_and_grads(kw, "reference", torch.float16, upstream=upstream, **options)
    got = _loss_and_grads(kw, backend, torch.float16, upstream=upstream, **options)
    assert truth[1].abs().max() < 1e-3  # gradients of the size a mean over 65536 anchors gives
    for name, g, t, r in zip(("loss", "dfeatures", "dlogits"), got, truth, ref):
        assert_within(g, t, r, backend, torch.float16, name=name)
        if name != "loss":  # and their size: not flushed towards zero
            assert_close(g.double().norm(), t.norm(), atol=0, rtol=2e-2, name=f"{name} norm")


@pytest.mark.parametrize("backend", backend_params())
def test_positives_with_vanishing_probability(backend):
    need_backend(backend, backend_device(backend))
    # Every positive column points away from its anchor at t = 0.02: probabilities ~exp(-100).
    d = 4
    anchors = torch.eye(d, dtype=torch.float64)
    feats = torch.cat([anchors, -anchors])  # row i + 4 is the opposite of anchor i and shares its label
    labels = torch.arange(d).repeat(2)
    kw = dict(features=feats, labels=labels, num_anchors=d)
    dtype, tol = (torch.float32, 1e-4) if backend == "triton" else (torch.float64, 1e-9)
    want = gk.fused_paco_loss(**kw, temperature=0.02, backend="reference", reduction="none")
    on_device = to_device({**kw, "features": feats.to(dtype)}, backend_device(backend))
    got = gk.fused_paco_loss(**on_device, temperature=0.02, backend=backend, reduction="none")
    assert torch.isfinite(want).all() and torch.isfinite(got).all()
    assert_close(got, want, atol=tol * (1 + want.abs().max().item()), rtol=tol)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", ["one class", "one anchor", "one row"])
def test_degenerate_sizes(backend, shape):
    need_backend(backend, backend_device(backend))
    kw = _problem(n=1 if shape == "one row" else 6, c=1 if shape == "one class" else 3, k=4)
    kw["labels"] = kw["labels"].clamp(max=kw["center_logits"].shape[1] - 1)
    dtype, tol = (torch.float32, 1e-4) if backend == "triton" else (torch.float64, 1e-9)
    options = dict(num_anchors=1) if shape == "one anchor" else {}
    if shape == "one anchor":
        kw["center_logits"] = kw["center_logits"][:1]
    _check_finite_and_close(kw, backend, dtype, tol, **options)


@pytest.mark.parametrize("backend", backend_params([*BACKENDS, "reference"]))
@pytest.mark.parametrize("where", ["features", "queue", "center_logits"])
def test_nan_inputs_propagate_to_the_loss(backend, where):
    if backend != "reference":
        need_backend(backend, backend_device(backend))
    kw = _problem()
    dtype = _work_dtype(backend)
    kw = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    kw[where] = kw[where].clone()
    kw[where][2, 1] = float("nan")
    loss = gk.fused_paco_loss(**to_device(kw, backend_device(backend)), backend=backend)
    assert torch.isnan(loss), f"{backend}: a NaN in {where} was hidden (loss {loss.item()})"


@pytest.mark.parametrize("backend", backend_params())
def test_double_backward_is_refused_with_a_clear_error(backend):
    need_backend(backend, backend_device(backend))
    kw = _problem()
    dtype = _work_dtype(backend)
    device = backend_device(backend)
    feats = kw["features"].to(device, dtype).requires_grad_()
    loss = gk.fused_paco_loss(feats, kw["labels"].to(device), backend=backend)
    (grad,) = torch.autograd.grad(loss, [feats], create_graph=True)  # a first derivative is fine
    reference = feats.detach().cpu().requires_grad_()
    want = torch.autograd.grad(gk.fused_paco_loss(reference, kw["labels"], backend="reference"), [reference])[0]
    assert_close(grad, want, atol=1e-5, rtol=1e-5, name="first derivative under create_graph")
    with pytest.raises(RuntimeError, match=f"double backward is not supported by backend='{backend}'"):
        torch.autograd.grad(grad.square().sum(), [feats])


def test_reference_double_backward_is_right():
    """The reference is plain autograd: its second derivatives pass gradgradcheck in float64."""
    kw = _problem(n=6, d=3, c=3, k=4)
    feats = kw["features"].clone().requires_grad_()
    logits = kw["center_logits"][:6].clone().requires_grad_()

    def fn(f, s):
        args = dict(kw, features=f, center_logits=s)
        return gk.fused_paco_loss(**args, alpha=0.5, temperature=0.5, backend="reference", reduction="none")

    assert torch.autograd.gradgradcheck(fn, (feats, logits))


def test_cpu_backend_is_bitwise_reproducible_at_a_fixed_thread_count():
    need_backend("cpu")
    kw = _problem(n=40, k=30)
    runs = [_loss_and_grads(kw, "cpu", torch.float32, alpha=0.3) for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


@GPU
def test_triton_kernels_use_atomics_only_in_the_one_pass_backward():
    """Results are deterministic by default: the only atomic add is the one-pass backward's dAnchors part, a shape
    the launcher takes only when asked (launch.BACKWARD, default two kernels) and torch's deterministic mode is off
    (tests/test_triton.py runs it)."""
    import ast

    folder = pathlib.Path(gk.__file__).parent / "triton"
    sources = {p.name: p.read_text() for p in folder.glob("*.py")}
    assert {"paco_fwd.py", "paco_bwd_rows.py", "paco_bwd_cols.py", "tiles.py"} <= set(sources)
    found = []
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef):
                calls = [c for c in ast.walk(node) if isinstance(c, ast.Attribute) and c.attr.startswith("atomic")]
                found += [(name, node.name)] * len(calls)
    assert found == [("paco_bwd_cols.py", "_add_anchor_part")]
    from gpaco_kernels.triton import launch

    if "GPACO_TRITON_BACKWARD" not in os.environ:
        assert launch.BACKWARD == "two-kernel"
