"""The reference backend, reached through every public entry point, equals an independent oracle of each published
loss in float64 (rel 1e-10), values and gradients."""

from __future__ import annotations

import pytest
import torch

import gpaco_kernels as gk
from gpaco_kernels import compat

from helpers import assert_close, need_backend
from oracles import gpaco_lt, gpaco_seg, long_tailed_counts, paco_lt, psc, supcon

TOL = dict(atol=1e-10, rtol=1e-10)

# These checks run in float64; Triton kernels are float32/bf16/fp16 and meet the oracles through test_backends.
FLOAT64_BACKENDS = ["reference", "torch", "cpu"]


@pytest.fixture(autouse=True)
def _backend_present(request):
    backend = request.node.callspec.params.get("backend") if hasattr(request.node, "callspec") else None
    if backend not in (None, "reference", "auto"):
        need_backend(backend)


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def leaf(t):
    return t.detach().clone().requires_grad_()


def check_same(ours, theirs, leaves_ours, leaves_theirs, names):
    assert_close(ours, theirs, name="loss", **TOL)
    for g_ours, g_theirs, name in zip(grads(ours, leaves_ours), grads(theirs, leaves_theirs), names):
        assert_close(g_ours, g_theirs, name=f"d{name}", **TOL)


def paco_batch(seed, batch, K, C, D):
    gen = torch.Generator().manual_seed(seed)
    n = 2 * batch + K
    feats = torch.nn.functional.normalize(torch.randn(n, D, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.randint(0, C, (n,), generator=gen)
    logits = torch.randn(batch, C, generator=gen, dtype=torch.float64)
    return feats, labels, logits


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
def test_paco_lt_matches_published(backend):
    C, K, batch = 7, 9, 6
    feats, labels, logits = paco_batch(0, batch, K, C, 5)
    counts = long_tailed_counts(C, 50, 10)
    loss_fn = compat.PaCoLoss(
        alpha=0.05, beta=1.0, gamma=0.7, supt=0.8, temperature=0.2, K=K, num_classes=C, backend=backend
    )
    loss_fn.cal_weight_for_classes(counts)
    f1, s1, f2, s2 = leaf(feats), leaf(logits), leaf(feats), leaf(logits)
    ours = loss_fn(f1, labels, s1)
    theirs = paco_lt(f2, labels, s2, counts, K=K, alpha=0.05, gamma=0.7, supt=0.8, temperature=0.2)
    assert_close(ours, theirs, name="loss", **TOL)
    g1, gs1 = grads(ours, [f1, s1])
    g2, gs2 = grads(theirs, [f2, s2])
    n_batch = feats.shape[0] - K
    assert_close(g1[:n_batch], g2[:n_batch], name="dfeatures[batch rows]", **TOL)
    assert torch.all(g1[n_batch:] == 0), "queue rows must get no gradient"
    assert_close(gs1, gs2, name="dsup_logits", **TOL)


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
@pytest.mark.parametrize("with_prior,smooth", [(False, 0.0), (True, 0.2)])
def test_gpaco_lt_matches_published(backend, with_prior, smooth):
    C, K, batch = 6, 11, 5
    feats, labels, _ = paco_batch(1, batch, K, C, 4)
    logits = torch.randn(2 * batch, C, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    counts = long_tailed_counts(C, 40, 20)
    loss_fn = compat.GPaCoLoss(
        alpha=0.3,
        beta=0.9,
        gamma=1.1,
        supt=1.3,
        temperature=0.3,
        base_temperature=0.5,
        K=K,
        num_classes=C,
        smooth=smooth,
        backend=backend,
    )
    if with_prior:
        loss_fn.cal_weight_for_classes(counts)
    f1, s1, f2, s2 = leaf(feats), leaf(logits), leaf(feats), leaf(logits)
    ours = loss_fn(f1, labels, s1)
    theirs = gpaco_lt(
        f2,
        labels,
        s2,
        counts if with_prior else None,
        K=K,
        alpha=0.3,
        beta=0.9,
        gamma=1.1,
        supt=1.3,
        temperature=0.3,
        base_temperature=0.5,
        smooth=smooth,
    )
    assert_close(ours, theirs, name="loss", **TOL)
    g1, gs1 = grads(ours, [f1, s1])
    g2, gs2 = grads(theirs, [f2, s2])
    assert_close(g1[: 2 * batch], g2[: 2 * batch], name="dfeatures[batch rows]", **TOL)
    assert_close(gs1, gs2, name="dsup_logits", **TOL)


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
@pytest.mark.parametrize("smooth", [None, 0.0, 0.25])
def test_gpaco_vit_matches_published(backend, smooth):
    """GPaCo/MAE-ViTs/paco.py: its defaults (alpha=0.05, temperature=0.2), no prior, and label smoothing given to
    forward (default 0.1); GPaCoLoss takes forward's smooth too, over its constructor's."""
    C, K, batch = 6, 11, 5
    feats, labels, _ = paco_batch(4, batch, K, C, 4)
    logits = torch.randn(2 * batch, C, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    f1, s1, f2, s2 = leaf(feats), leaf(logits), leaf(feats), leaf(logits)
    loss_fn = compat.GPaCoViTLoss(K=K, num_classes=C, backend=backend)
    ours = loss_fn(f1, labels, s1) if smooth is None else loss_fn(f1, labels, s1, smooth=smooth)
    theirs = gpaco_lt(f2, labels, s2, None, K=K, alpha=0.05, temperature=0.2, smooth=0.1 if smooth is None else smooth)
    assert_close(ours, theirs, name="loss", **TOL)
    g1, gs1 = grads(ours, [f1, s1])
    g2, gs2 = grads(theirs, [f2, s2])
    assert_close(g1[: 2 * batch], g2[: 2 * batch], name="dfeatures[batch rows]", **TOL)
    assert_close(gs1, gs2, name="dsup_logits", **TOL)
    if smooth is not None:
        gpaco = compat.GPaCoLoss(alpha=0.05, temperature=0.2, K=K, num_classes=C, smooth=0.9, backend=backend)
        assert_close(gpaco(feats, labels, logits, smooth=smooth), theirs.detach(), name="GPaCoLoss smooth=", **TOL)


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
def test_gpaco_seg_matches_published(backend):
    C, n = 5, 23
    gen = torch.Generator().manual_seed(3)
    feats = torch.nn.functional.normalize(torch.randn(n, 6, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.randint(0, C + 1, (n,), generator=gen)  # label == C is an ignored pixel
    assert (labels == C).any() and (labels < C).any()
    logits = torch.randn(n, C, generator=gen, dtype=torch.float64)
    loss_fn = compat.PaCoSegLoss(alpha=0.5, gamma=0.8, supt=3.0, temperature=0.4, num_classes=C, backend=backend)
    f1, s1, f2, s2 = leaf(feats), leaf(logits), leaf(feats), leaf(logits)
    check_same(
        loss_fn(f1, labels, s1),
        gpaco_seg(f2, labels, s2, num_classes=C, alpha=0.5, gamma=0.8, temperature=0.4),
        [f1, s1],
        [f2, s2],
        ["features", "sup_logits"],
    )


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("supervised", [True, False])
def test_supcon_matches_published(backend, mode, supervised):
    gen = torch.Generator().manual_seed(4)
    bsz, views = 9, 3
    feats = torch.nn.functional.normalize(torch.randn(bsz, views, 8, generator=gen, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, 4, (bsz,), generator=gen) if supervised else None
    labels_arg = None
    if supervised:
        labels[0] = 99  # a class of its own in the batch: its views are its only positives
        labels_arg = labels
    f1, f2, f3 = leaf(feats), leaf(feats), leaf(feats)
    theirs = supcon(f3, labels, temperature=0.1, base_temperature=0.07, contrast_mode=mode)
    module = compat.SupConLoss(temperature=0.1, contrast_mode=mode, base_temperature=0.07, backend=backend)
    check_same(module(f1, labels_arg), theirs, [f1], [f3], ["features"])
    functional = gk.fused_supcon_loss(
        f2, labels_arg, temperature=0.1, base_temperature=0.07, contrast_mode=mode, backend=backend
    )
    assert_close(functional, theirs, name="fused_supcon_loss", **TOL)


def test_supcon_explicit_mask_falls_back_to_dense_with_a_warning():
    gen = torch.Generator().manual_seed(5)
    feats = torch.nn.functional.normalize(torch.randn(6, 2, 5, generator=gen, dtype=torch.float64), dim=-1)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    mask = (labels[:, None] == labels[None, :]).double()
    module = compat.SupConLoss(temperature=0.2, base_temperature=0.2)
    with pytest.warns(UserWarning, match="dense"):
        with_mask = module(feats, mask=mask)
    assert_close(with_mask, supcon(feats, labels, temperature=0.2, base_temperature=0.2), name="loss", **TOL)
    with pytest.raises(ValueError, match="labels or mask"):
        module(feats, labels, mask)


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
@pytest.mark.parametrize("exclude", [True, False])
def test_psc_matches_published(backend, exclude):
    gen = torch.Generator().manual_seed(6)
    feats = torch.randn(13, 7, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (13,), generator=gen)
    protos = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    f1, p1, f2, p2 = leaf(feats), leaf(protos), leaf(feats), leaf(protos)
    ours = gk.fused_psc_loss(f1, labels, p1, temperature=0.2, exclude_positive_class=exclude, backend=backend)
    theirs = psc(f2, labels, p2, temperature=0.2, exclude_positive_class=exclude)
    check_same(ours, theirs, [f1, p1], [f2, p2], ["features", "prototypes"])


def test_psc_module_holds_learnable_prototypes():
    module = gk.PSCLoss(num_classes=4, dim=6, temperature=0.5)
    params = dict(module.named_parameters())
    assert list(params) == ["prototypes"] and params["prototypes"].shape == (4, 6)
    feats = torch.randn(10, 6)
    labels = torch.randint(0, 4, (10,))
    module(feats, labels).backward()
    assert module.prototypes.grad is not None and module.prototypes.grad.abs().sum() > 0
    expected = psc(feats.double(), labels, module.prototypes.detach().double(), temperature=0.5)
    assert_close(module(feats, labels), expected, atol=1e-5, rtol=1e-5, name="PSCLoss")


def test_fused_paco_loss_module_matches_functional():
    gen = torch.Generator().manual_seed(7)
    feats = torch.randn(12, 4, generator=gen)
    labels = torch.randint(0, 3, (12,), generator=gen)
    logits = torch.randn(12, 3, generator=gen)
    module = gk.FusedPaCoLoss(alpha=0.5, temperature=0.3, class_counts=[5, 3, 1])
    expected = gk.fused_paco_loss(
        feats, labels, center_logits=logits, alpha=0.5, temperature=0.3, class_counts=[5, 3, 1]
    )
    assert_close(module(feats, labels, center_logits=logits), expected, atol=0, rtol=0, name="module")
    assert torch.equal(module.state_dict()["class_counts"], torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64))
