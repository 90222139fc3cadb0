"""Each input check raises before any compute, with the argument's name and what was seen, and modifies nothing."""

from __future__ import annotations

import pytest
import torch

import gpaco_kernels as gk
from gpaco_kernels import compat


def base(**over):
    gen = torch.Generator().manual_seed(0)
    kw = dict(
        features=torch.randn(8, 4, generator=gen),
        labels=torch.randint(0, 3, (8,), generator=gen),
        num_anchors=6,
        queue=torch.randn(5, 4, generator=gen),
        queue_labels=torch.randint(0, 3, (5,), generator=gen),
        center_logits=torch.randn(6, 3, generator=gen),
    )
    kw.update(over)
    return kw


BAD = [
    # (id, overrides, exception, words the message must contain)
    ("features-not-tensor", dict(features=[[1.0] * 4] * 8), TypeError, ["features", "torch.Tensor"]),
    ("features-integer", dict(features=torch.ones(8, 4, dtype=torch.long)), TypeError, ["features", "floating"]),
    ("features-rank", dict(features=torch.randn(8, 4, 1)), ValueError, ["features", "(N, D)", "(8, 4, 1)"]),
    (
        "features-empty",
        dict(features=torch.randn(8, 0), queue=None, queue_labels=None),
        ValueError,
        ["features", "(8, 0)"],
    ),
    ("labels-float", dict(labels=torch.zeros(8)), TypeError, ["labels", "integer", "float32"]),
    ("labels-bool", dict(labels=torch.zeros(8, dtype=torch.bool)), TypeError, ["labels", "bool"]),
    ("labels-size", dict(labels=torch.zeros(7, dtype=torch.long)), ValueError, ["labels", "(7,)", "(N,)"]),
    ("labels-rank", dict(labels=torch.zeros(8, 1, dtype=torch.long)), ValueError, ["labels", "(8, 1)"]),
    ("labels-range-high", dict(labels=torch.tensor([0, 1, 2, 3, 0, 1, 2, 0])), ValueError, ["labels", "[0, 3)", "3"]),
    ("labels-range-negative", dict(labels=torch.tensor([0, 1, 2, -1, 0, 1, 2, 0])), ValueError, ["labels", "-1"]),
    ("queue-labels-range", dict(queue_labels=torch.tensor([0, 1, 7, 0, 1])), ValueError, ["queue_labels", "7"]),
    ("num-anchors-too-big", dict(num_anchors=9), ValueError, ["num_anchors", "[1, 8]", "9"]),
    ("num-anchors-zero", dict(num_anchors=0), ValueError, ["num_anchors", "0"]),
    ("num-anchors-float", dict(num_anchors=6.0), TypeError, ["num_anchors", "int"]),
    ("queue-without-labels", dict(queue_labels=None), ValueError, ["queue", "queue_labels"]),
    ("labels-without-queue", dict(queue=None), ValueError, ["queue_labels", "queue"]),
    ("queue-dim", dict(queue=torch.randn(5, 3)), ValueError, ["queue", "D = 4", "(5, 3)"]),
    ("queue-integer", dict(queue=torch.ones(5, 4, dtype=torch.long)), TypeError, ["queue", "floating", "int64"]),
    ("queue-labels-size", dict(queue_labels=torch.zeros(4, dtype=torch.long)), ValueError, ["queue_labels", "(4,)"]),
    ("queue-labels-float", dict(queue_labels=torch.zeros(5)), TypeError, ["queue_labels", "integer"]),
    ("both-class-blocks", dict(centers=torch.randn(3, 4)), ValueError, ["center_logits", "centers", "not both"]),
    ("center-logits-rows", dict(center_logits=torch.randn(8, 3)), ValueError, ["center_logits", "(6, C)", "(8, 3)"]),
    (
        "center-logits-integer",
        dict(center_logits=torch.ones(6, 3, dtype=torch.int32)),
        TypeError,
        ["center_logits", "floating", "int32"],
    ),
    ("centers-dim", dict(center_logits=None, centers=torch.randn(3, 5)), ValueError, ["centers", "D = 4", "(3, 5)"]),
    (
        "centers-bool",
        dict(center_logits=None, centers=torch.ones(3, 4, dtype=torch.bool)),
        TypeError,
        ["centers", "bool"],
    ),
    ("empty-class-block", dict(center_logits=torch.randn(6, 0)), ValueError, ["0 classes"]),
    ("temperature-zero", dict(temperature=0.0), ValueError, ["temperature", "> 0", "0.0"]),
    ("temperature-negative", dict(temperature=-1), ValueError, ["temperature", "-1"]),
    ("temperature-nan", dict(temperature=float("nan")), ValueError, ["temperature", "finite"]),
    ("temperature-str", dict(temperature="0.1"), TypeError, ["temperature", "str"]),
    ("center-temperature", dict(center_temperature=0), ValueError, ["center_temperature"]),
    ("base-temperature", dict(base_temperature=-0.5), ValueError, ["base_temperature", "-0.5"]),
    ("alpha-negative", dict(alpha=-0.1), ValueError, ["alpha", "-0.1"]),
    ("beta-negative", dict(beta=-1.0), ValueError, ["beta"]),
    ("gamma-inf", dict(gamma=float("inf")), ValueError, ["gamma", "finite"]),
    ("smoothing-one", dict(label_smoothing=1.0), ValueError, ["label_smoothing", "[0, 1)"]),
    (
        "smoothing-no-classes",
        dict(center_logits=None, label_smoothing=0.1),
        ValueError,
        ["label_smoothing", "0 classes"],
    ),
    (
        "exclude-no-classes",
        dict(center_logits=None, exclude_positive_class=True),
        ValueError,
        ["exclude_positive_class"],
    ),
    ("exclude-not-bool", dict(exclude_positive_class=1), TypeError, ["exclude_positive_class", "bool"]),
    ("ignore-index-float", dict(ignore_index=-1.0), TypeError, ["ignore_index", "int"]),
    ("reduction", dict(reduction="avg"), ValueError, ["reduction", "'avg'", "mean"]),
    ("backend-unknown", dict(backend="cuda"), ValueError, ["backend", "'cuda'", "auto"]),
    ("counts-length", dict(class_counts=[1, 2]), ValueError, ["class_counts", "(3,)", "(2,)"]),
    ("counts-negative", dict(class_counts=[1, -2, 3]), ValueError, ["class_counts", ">= 0"]),
    ("counts-zero-sum", dict(class_counts=[0, 0, 0]), ValueError, ["class_counts", "positive sum"]),
    ("counts-not-numbers", dict(class_counts="abc"), TypeError, ["class_counts"]),
    (
        "counts-without-classes",
        dict(center_logits=None, class_counts=[1, 2, 3]),
        ValueError,
        ["class_counts", "class block"],
    ),
]


@pytest.mark.parametrize("over,exc,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_argument_raises_with_its_name(over, exc, words):
    kw = base(**over)
    snapshot = {k: v.clone() for k, v in kw.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(exc) as info:
        gk.fused_paco_loss(**kw)
    for word in words:
        assert word in str(info.value), f"{word!r} missing from: {info.value}"
    for k, v in snapshot.items():
        assert torch.equal(kw[k], v), f"{k} was modified"


def test_mismatched_devices_are_named():
    meta = torch.randn(6, 3, device="meta")
    with pytest.raises(ValueError, match="center_logits is on meta but features is on cpu"):
        gk.fused_paco_loss(**base(center_logits=meta))
    with pytest.raises(ValueError, match="labels is on meta"):
        gk.fused_paco_loss(**base(labels=torch.zeros(8, dtype=torch.long, device="meta")))


def test_unavailable_backend_says_why(monkeypatch):
    from gpaco_kernels.ops import dispatch

    monkeypatch.setitem(dispatch._LOADED, "cpu", ImportError("simulated: no extension"))
    with pytest.raises(ValueError, match="backend='cpu' is not available here: importing it failed.*simulated"):
        gk.fused_paco_loss(**base(backend="cpu"))
    # 'auto' never fails because of a broken optional backend.
    assert gk.fused_paco_loss(**base(backend="auto")).isfinite()


def test_supcon_checks():
    feats = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"features must have shape \(bsz, n_views, ...\).*\(4, 6\)"):
        gk.fused_supcon_loss(feats.reshape(4, 6))
    with pytest.raises(ValueError, match="contrast_mode must be one of"):
        gk.fused_supcon_loss(feats, contrast_mode="two")
    with pytest.raises(ValueError, match=r"labels must have shape \(bsz,\) = \(4,\), got \(5,\)"):
        gk.fused_supcon_loss(feats, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"features must have shape \(bsz, n_views, ...\)"):
        compat.SupConLoss()(feats.reshape(4, 6))


def test_psc_checks():
    with pytest.raises(ValueError, match="prototypes must have at least 2 rows"):
        gk.fused_psc_loss(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), torch.randn(1, 4))
    with pytest.raises(TypeError, match="prototypes must be a floating-point tensor"):
        gk.fused_psc_loss(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"prototypes must have shape \(C, D\) with D = 4"):
        gk.fused_psc_loss(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), torch.randn(2, 5))
    with pytest.raises(ValueError, match="num_classes and dim must be >= 1"):
        gk.PSCLoss(num_classes=0, dim=4)


def test_compat_checks():
    feats = torch.randn(2 * 3 + 4, 5)
    labels = torch.randint(0, 3, (10,))
    loss = compat.PaCoLoss(alpha=0.1, K=4, num_classes=3)
    with pytest.raises(RuntimeError, match="cal_weight_for_classes"):
        loss(feats, labels, torch.randn(3, 3))
    loss.cal_weight_for_classes([5, 3, 1])
    with pytest.raises(ValueError, match=r"sup_logits must have shape \(anchors, num_classes=3\), got \(3, 4\)"):
        loss(feats, labels, torch.randn(3, 4))
    with pytest.raises(ValueError, match="labels must have one entry per row of features"):
        loss(feats, labels[:9], torch.randn(3, 3))
    with pytest.raises(ValueError, match="sup_logits is required"):
        loss(feats, labels)
    with pytest.raises(ValueError, match=r"class_counts must have shape \(3,\)"):
        loss.cal_weight_for_classes([1, 2])
    with pytest.raises(ValueError, match="K .queue size. must be >= 0"):
        compat.GPaCoLoss(alpha=0.1, K=-1, num_classes=3)
    with pytest.raises(ValueError, match="features must have more than K=40 rows"):
        compat.GPaCoLoss(alpha=0.1, K=40, num_classes=3)(feats, labels, torch.randn(3, 3))
    seg = compat.PaCoSegLoss(alpha=0.1, num_classes=3)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\).*ignore_index=3.*found 255"):
        seg(feats, torch.full((10,), 255), torch.randn(10, 3))
    with pytest.warns(UserWarning, match="mask is ignored"):
        seg(feats, labels, torch.randn(10, 3), mask=torch.ones(10, 10))
    with pytest.warns(UserWarning, match="does not use a class prior"):
        seg.cal_weight_for_classes([1, 2, 3])


def test_module_checks():
    with pytest.raises(ValueError, match="class_counts must have a positive sum"):
        gk.FusedPaCoLoss(class_counts=[0, 0])
    with pytest.raises(ValueError, match="reduction must be one of"):
        gk.SupConLoss(reduction="avg")(torch.randn(3, 2, 4))


FORWARD_ARGS = ("features", "labels", "num_anchors", "queue", "queue_labels", "center_logits", "centers")


@pytest.mark.parametrize("over,exc,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_argument_through_the_module_raises_the_same(over, exc, words):
    """The same checks reached through FusedPaCoLoss: tensors in forward, options in the constructor."""
    kw = base(**over)
    forward = {k: v for k, v in kw.items() if k in FORWARD_ARGS}
    options = {k: v for k, v in kw.items() if k not in FORWARD_ARGS}
    with pytest.raises(exc) as info:
        gk.FusedPaCoLoss(**options)(**forward)
    for word in words:
        assert word in str(info.value), f"{word!r} missing from: {info.value}"


def test_errors_name_the_argument_as_the_user_passed_it():
    """fused_psc_loss takes prototypes (centers inside the op); the published modules take sup_logits (center_logits
    inside): an error must name what the user wrote."""
    f, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    with pytest.raises(ValueError, match=r"^prototypes must have shape \(C, D\)"):
        gk.fused_psc_loss(f, y, torch.randn(3, 5))
    # (float64 prototypes with float32 features are not an error: the loss computes in the promotion, float64)
    assert gk.fused_psc_loss(f, y, torch.randn(3, 4, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError, match=r"^sup_logits must have shape \(num_anchors, C\)"):
        gk.compat.PaCoSegLoss(alpha=0.5, num_classes=3)(f, y, torch.randn(5, 3))


def test_the_two_supcon_modules_cannot_be_confused_positionally():
    with pytest.raises(TypeError, match="positional"):
        gk.SupConLoss(0.1, 0.07)  # keyword-only: its order differed from the published module's
    published = compat.SupConLoss(
        0.1, "one", 0.07
    )  # the published order (temperature, contrast_mode, base_temperature)
    assert (published.temperature, published.contrast_mode, published.base_temperature) == (0.1, "one", 0.07)
