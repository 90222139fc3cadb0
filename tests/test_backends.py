"""Every non-reference backend against the reference over a grid of shapes and options, values and every gradient,
in every dtype the backend accepts and on every device here.

Three-way check (from apple/ml-cross-entropy): a float64 reference is the ground truth; the reference run on the
same inputs rounded to the test dtype shows the error that dtype costs by itself; a backend passes when its error
against the truth is at most twice that plus the dtype's tolerance, and, in half precision, when it is close to that
same-input reference (gpaco_kernels.tolerances, one table)."""

from __future__ import annotations

import pytest
import torch

import gpaco_kernels as gk
from gpaco_kernels.functional import _paco_loss

from helpers import BACKENDS, assert_close, assert_within, backend_dtypes, need_backend, on_devices

BACKEND_DTYPES = backend_dtypes()


def work_dtype(backend):
    """float64 where the backend has it (tight comparisons), float32 for Triton."""
    return torch.float32 if backend == "triton" else torch.float64


def work_tol(backend):
    return 1e-5 if backend == "triton" else 1e-12


def _normal(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def make_case(name, seed=0, dim=5):
    """(kwargs of fused_paco_loss in float64, names of the tensor arguments that take a gradient); dim: D."""
    gen = torch.Generator().manual_seed(seed)
    N, A, K, C, D = 37, 19, 29, 11, dim  # odd sizes: no tile or chunk multiple
    feats = torch.nn.functional.normalize(_normal(gen, N, D), dim=1) * 1.5
    labels = torch.randint(0, C, (N,), generator=gen)
    kw = dict(
        features=feats,
        labels=labels,
        num_anchors=A,
        queue=_normal(gen, K, D),
        queue_labels=torch.randint(0, C, (K,), generator=gen),
        center_logits=_normal(gen, A, C),
        alpha=0.7,
        gamma=0.5,
        temperature=0.3,
        center_temperature=0.7,
        base_temperature=0.2,
    )
    grad_args = ["features", "center_logits"]
    if name == "logits+prior":
        kw["class_counts"] = torch.arange(1, C + 1) ** 2
    elif name == "centers+smoothing+exclude":
        del kw["center_logits"]
        kw.update(centers=_normal(gen, C, D), label_smoothing=0.1, exclude_positive_class=True)
        grad_args = ["features", "centers"]
    elif name == "normalize+centers":
        del kw["center_logits"]
        kw.update(centers=_normal(gen, C, D) * 3, normalize=True, features=feats * 2.0)
        grad_args = ["features", "centers"]
    elif name == "no-queue":
        del kw["queue"], kw["queue_labels"]
    elif name == "no-classes":  # C = 0: pure SupCon with a queue
        del kw["center_logits"]
        grad_args = ["features"]
    elif name == "no-positives":  # no class block, every label distinct: P = 0 on every anchor but two
        del kw["center_logits"], kw["queue"], kw["queue_labels"]
        kw["labels"] = torch.arange(N)
        kw["labels"][5] = 3
        grad_args = ["features"]
    elif name == "ignored":
        kw["labels"][::3] = -100
        kw["queue_labels"][::4] = -100
    elif name == "ignore-as-class-count":  # the pixel loss's convention: label == C is ignored
        kw["labels"][1::4] = C
        kw["ignore_index"] = C
    elif name == "peaked":  # near-duplicate positives at a low temperature: a far-from-flat softmax
        kw["features"] = feats.clone()
        kw["features"][1] = feats[0] + 1e-3 * _normal(gen, D)
        kw["labels"][1] = kw["labels"][0]
        kw.update(temperature=0.05, base_temperature=0.05)
    elif name == "single-anchor":
        kw["num_anchors"] = 1
        kw["center_logits"] = kw["center_logits"][:1]
    elif name == "zero-weights":
        kw.update(alpha=0.0, gamma=0.0, beta=2.0)
    elif name == "detached-batch-columns":  # batch rows take a gradient as anchors only (compat.pml's memory)
        kw["batch_column_grad"] = False
    else:
        assert name == "base", name
    return kw, grad_args


CASES = [
    "base",
    "logits+prior",
    "centers+smoothing+exclude",
    "normalize+centers",
    "no-queue",
    "no-classes",
    "no-positives",
    "ignored",
    "ignore-as-class-count",
    "peaked",
    "single-anchor",
    "zero-weights",
    "detached-batch-columns",
]


def run(kw, grad_args, backend, dtype, reduction, upstream, device="cpu", round_to=None):
    """Loss and the gradients of (upstream * loss).sum() for the grad_args, computed in dtype on device. round_to:
    round the inputs to that dtype first (the float64 truth of exactly the inputs a half-precision run sees)."""
    args = {}
    for key, value in kw.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                if round_to is not None:
                    value = value.to(round_to)
                value = value.to(dtype).detach().requires_grad_(key in grad_args)
        args[key] = value
    # _paco_loss: fused_paco_loss's body, which also takes the options only the wrappers set (batch_column_grad).
    loss = _paco_loss(**args, reduction=reduction, backend=backend)
    grads = torch.autograd.grad((loss * upstream.to(device, loss.dtype)).sum(), [args[k] for k in grad_args])
    return loss, grads


def check_against_reference(kw, grad_args, backend, dtype, reduction, upstream, device="cpu", name=""):
    """The three-way check of every output: float64 truth, the reference on the same (rounded) inputs, the backend."""
    truth = run(kw, grad_args, "reference", torch.float64, reduction, upstream)
    ref = run(kw, grad_args, "reference", dtype, reduction, upstream)
    got = run(kw, grad_args, backend, dtype, reduction, upstream, device)
    names = ["loss"] + [f"d{k}" for k in grad_args]
    for out, t, r, g in zip(names, [truth[0], *truth[1]], [ref[0], *ref[1]], [got[0], *got[1]]):
        assert g.dtype == r.dtype and g.device.type == device, f"{out}: {g.dtype} on {g.device}"
        assert_within(g, t, r, backend, dtype, name=f"{name}/{out}")


@pytest.mark.parametrize("tiles", ["default", "small"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend,dtype,device", on_devices(BACKEND_DTYPES))
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_backend_matches_reference(backend, tiles, case, dtype, reduction, device, request):
    need_backend(backend, device)
    if tiles == "small":
        request.getfixturevalue("small_tiles")
    kw, grad_args = make_case(case)
    n_out = kw["num_anchors"] if reduction == "none" else 1
    # An upstream gradient other than 1: random per anchor, or 2.5 on the mean.
    upstream = torch.randn(n_out, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    upstream = upstream if reduction == "none" else torch.tensor(2.5, dtype=torch.float64)
    check_against_reference(kw, grad_args, backend, dtype, reduction, upstream, device, name=case)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_without_grad_and_non_contiguous(backend, small_tiles):
    need_backend(backend)
    kw, _ = make_case("logits+prior", seed=3)
    kw = {k: v.to(work_dtype(backend)) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    tol = work_tol(backend)
    # Non-contiguous views of the same values: a transposed copy read back through .T, and a strided slice.
    feats_t = kw["features"].T.contiguous().T
    logits_wide = torch.zeros(kw["center_logits"].shape[0], 2 * kw["center_logits"].shape[1], dtype=feats_t.dtype)
    logits_wide[:, ::2] = kw["center_logits"]
    # Labels as an int64 column of a (N, 2) tensor (stride 2), as `labels = y[:, 0]` gives; queue labels likewise.
    labels_2d = torch.stack([kw["labels"], kw["labels"].flip(0)], dim=1)
    queue_labels_2d = torch.stack([kw["queue_labels"].flip(0), kw["queue_labels"]], dim=1)
    assert not feats_t.is_contiguous() and not logits_wide[:, ::2].is_contiguous()
    assert not labels_2d[:, 0].is_contiguous() and not queue_labels_2d[:, 1].is_contiguous()
    expected = gk.fused_paco_loss(**kw, backend="reference", reduction="none")
    strided = dict(
        kw,
        features=feats_t,
        center_logits=logits_wide[:, ::2],
        labels=labels_2d[:, 0],
        queue_labels=queue_labels_2d[:, 1],
    )
    got = gk.fused_paco_loss(**strided, backend=backend, reduction="none")
    assert not got.requires_grad
    assert_close(got, expected, atol=tol, rtol=tol, name="no-grad, non-contiguous")
    # Only the class logits require grad: the features gradient is not computed, the logits one is right.
    logits = logits_wide[:, ::2].clone().requires_grad_()
    ref_logits = kw["center_logits"].clone().requires_grad_()
    gk.fused_paco_loss(**dict(strided, center_logits=logits), backend=backend).backward()
    gk.fused_paco_loss(**dict(kw, center_logits=ref_logits), backend="reference").backward()
    assert_close(logits.grad, ref_logits.grad, atol=tol, rtol=tol, name="dcenter_logits")


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_anchors_ignored_gives_zero_loss_and_zero_gradients(backend):
    need_backend(backend)
    kw, _ = make_case("base")
    kw = {k: v.to(work_dtype(backend)) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    kw["labels"] = torch.full_like(kw["labels"], -100)
    feats = kw["features"].clone().requires_grad_()
    loss = gk.fused_paco_loss(**dict(kw, features=feats), backend=backend)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(feats.grad == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_supcon_and_psc_through_backend(backend, small_tiles):
    need_backend(backend)
    gen = torch.Generator().manual_seed(9)
    dtype, tol = work_dtype(backend), work_tol(backend)
    feats = _normal(gen, 7, 3, 6).to(dtype)
    labels = torch.randint(0, 3, (7,), generator=gen)
    for mode in ("all", "one"):
        a = gk.fused_supcon_loss(feats, labels, contrast_mode=mode, normalize=True, backend=backend, reduction="none")
        b = gk.fused_supcon_loss(
            feats, labels, contrast_mode=mode, normalize=True, backend="reference", reduction="none"
        )
        assert_close(a, b, atol=tol, rtol=tol, name=f"supcon {mode}")
    protos = _normal(gen, 5, 6).to(dtype)
    flat = feats[:, 0]
    a = gk.fused_psc_loss(flat, labels, protos, backend=backend, reduction="sum")
    b = gk.fused_psc_loss(flat, labels, protos, backend="reference", reduction="sum")
    assert_close(a, b, atol=tol, rtol=tol, name="psc")
