"""The C++ backend: its label check, indices past 2^31, thread counts, a missing extension, and a float cancellation
regression. (opcheck and torch.compile of every backend's op: tests/test_op.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import gpaco_kernels as gk
from gpaco_kernels.functional import canonicalize
from gpaco_kernels.ops import ContrastInputs, cpu_backend
from gpaco_kernels.ops.op import call_forward

from helpers import assert_close


def test_extension_is_built():
    # The README's install builds it; a missing extension here is a failed install, not something to skip.
    assert gk.HAS_CPU_EXT, gk.ops.dispatch.backend_unavailable_reason("cpu")


def _problem(dtype=torch.float64, centers=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(11, 4, generator=gen, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 3, (11,), generator=gen)
    kw = dict(
        num_anchors=7,
        queue=torch.randn(5, 4, generator=gen, dtype=dtype),
        queue_labels=torch.randint(0, 3, (5,), generator=gen),
        class_counts=[3, 2, 1],
        label_smoothing=0.1,
    )
    if centers:
        kw["centers"] = torch.randn(3, 4, generator=gen, dtype=dtype, requires_grad=True)
    else:
        kw["center_logits"] = torch.randn(7, 3, generator=gen, dtype=dtype, requires_grad=True)
    return feats, labels, kw


def test_kernel_checks_labels_itself():
    """Under torch.compile the Python value checks are skipped; the C++ kernel still refuses labels out of range."""
    feats, labels, kw = _problem(torch.float32)
    x, cfg, _ = canonicalize(feats, labels, backend="cpu", **kw)
    bad = x.labels.clone()
    bad[2] = 3
    x = ContrastInputs(x.features, bad, *x.tensors()[2:])
    with pytest.raises(RuntimeError, match=r"labels must be in \[0, 3\).*found 3"):
        call_forward(cpu_backend.OPS[0], x, cfg.op_params(), False)


def test_thread_counts_agree():
    feats, labels, kw = _problem(torch.float32, seed=4)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            f = feats.detach().clone().requires_grad_()
            loss = gk.fused_paco_loss(f, labels, backend="cpu", **{k: v for k, v in kw.items()})
            (grad,) = torch.autograd.grad(loss, [f])
            results.append((loss.detach(), grad))
    finally:
        torch.set_num_threads(before)
    assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-6, name="loss, 1 vs 2 threads")
    assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-6, name="gradient, 1 vs 2 threads")


@pytest.mark.slow
def test_index_arithmetic_past_2_pow_31():
    """N = 50 000 anchors against 50 000 batch columns: N x M = 2.5e9 > 2^31. Losses and gradients of anchors near
    the end (row offsets past 2^31 / M) against the reference on the same anchors moved to the front."""
    n, dim = 50_000, 4
    gen = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)
    labels = torch.randint(0, 1000, (n,), generator=gen)
    assert n * n > 2**31
    rows = torch.tensor([0, 45_001, 49_998, 49_999])
    upstream = torch.zeros(n)
    upstream[rows] = torch.tensor([0.5, -1.0, 2.0, 1.5])
    f = feats.clone().requires_grad_()
    per_anchor = gk.fused_paco_loss(f, labels, temperature=0.5, reduction="none", backend="cpu")
    (grad,) = torch.autograd.grad(per_anchor, [f], upstream)

    rest = torch.ones(n, dtype=torch.bool)
    rest[rows] = False
    order = torch.cat([rows, rest.nonzero().squeeze(1)])
    f_ref = feats[order].double().requires_grad_()
    ref = gk.fused_paco_loss(
        f_ref, labels[order], num_anchors=len(rows), temperature=0.5, reduction="none", backend="reference"
    )
    (grad_ref,) = torch.autograd.grad(ref, [f_ref], upstream[rows].double())
    assert_close(per_anchor[rows], ref, atol=2e-5, rtol=2e-5, name="losses past 2^31")
    grad_back = torch.empty_like(grad_ref)
    grad_back[order] = grad_ref
    assert_close(grad, grad_back, atol=2e-5, rtol=2e-5, name="gradient past 2^31")


def test_missing_extension_falls_back_and_explains():
    code = (
        "import sys; sys.modules['gpaco_kernels._C'] = None\n"
        "import torch, gpaco_kernels as g\n"
        "from gpaco_kernels.ops import resolve_backend\n"
        "assert not g.HAS_CPU_EXT and resolve_backend('auto') == 'torch'\n"
        "f = torch.randn(4, 3); y = torch.tensor([0, 1, 0, 1])\n"
        "assert g.fused_paco_loss(f, y).isfinite()\n"
        "try:\n"
        "    g.fused_paco_loss(f, y, backend='cpu')\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "backend='cpu' is not available here" in out
    assert "pip install --no-build-isolation -e ." in out


@pytest.mark.parametrize("exclude", [False, True])
def test_masked_column_holding_the_max_does_not_cancel_the_denominator(exclude):
    """Regression (found by the property tests): the self column (or the excluded own class) is masked out of the
    denominator but holds the row's max; with the true denominator ~1e-8 of it, subtracting it after summing left
    float32 noise (loss -0.23 instead of -0.69). Now it is left out of the sum."""
    feats = torch.tensor([[0.9793, 0.3953], [0.0602, 0.6065]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    kw = dict(num_anchors=1, alpha=0.05, gamma=0.5, temperature=0.0498, reduction="none")
    if exclude:  # the own class is the max and is excluded; the other class is far below it
        kw.update(center_logits=torch.tensor([[20.0, 2.0]], dtype=torch.float64), exclude_positive_class=True)
    want = gk.fused_paco_loss(feats, labels, backend="reference", **kw)
    for dtype, tol in [(torch.float64, 1e-12), (torch.float32, 1e-5)]:
        args = {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in kw.items()}
        got = gk.fused_paco_loss(feats.to(dtype), labels, backend="cpu", **args)
        assert_close(got, want, atol=tol, rtol=tol, name=f"{dtype}")


@pytest.mark.parametrize("mode", ["mkl", "float32"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["base", "centers+smoothing+exclude", "normalize+centers", "ignored", "peaked"])
def test_half_precision_paths_match_the_reference(monkeypatch, small_tiles, mode, dtype, case):
    """Both ways the cpu backend multiplies bfloat16/float16 inputs (MKL's half GEMMs with float32 accumulation, or
    the inputs upcast once), forced whatever this CPU would pick, against the float64 reference and the reference on
    the same rounded inputs (the tolerance table)."""
    from gpaco_kernels.ops.cpu_backend import half_gemm_mode

    from test_backends import check_against_reference, make_case

    if mode == "mkl" and not gk.ops.cpu_backend._C.mkl_half_gemm(str(dtype)[6:]):
        pytest.skip(f"this torch has no MKL {dtype} GEMM")  # not an x86-64 MKL build: only 'float32' exists
    monkeypatch.setenv("GPACO_CPU_HALF_GEMM", mode)
    assert half_gemm_mode(dtype) == mode
    kw, grad_args = make_case(case)
    upstream = torch.linspace(-1.0, 2.0, kw["num_anchors"], dtype=torch.float64)
    check_against_reference(kw, grad_args, "cpu", dtype, "none", upstream, name=f"{case} {mode}")


def test_float16_tiny_gradients_keep_their_scale_through_mkl_products(monkeypatch):
    """The float16 GEMM path rounds G to float16: G carries 1/A after a mean, so the block is scaled by a power of two
    before the rounding (else terms of 1e-8 flush to zero)."""
    if not gk.ops.cpu_backend._C.mkl_half_gemm("float16"):
        pytest.skip("this torch has no MKL float16 GEMM")
    import test_numerics

    monkeypatch.setenv("GPACO_CPU_HALF_GEMM", "mkl")
    test_numerics.test_float16_gradients_of_a_mean_over_65536_anchors("cpu")


def test_half_gemm_mode_follows_the_cpu_and_refuses_a_bad_override(monkeypatch):
    from gpaco_kernels.ops import cpu_backend

    monkeypatch.delenv("GPACO_CPU_HALF_GEMM", raising=False)
    for flags, want in ((frozenset({"avx512f"}), "float32"), (frozenset({"avx512f", "avx512_bf16"}), "mkl")):
        monkeypatch.setattr(cpu_backend, "_FLAGS", flags)
        expected = want if cpu_backend._C.mkl_half_gemm("bfloat16") else "float32"
        assert cpu_backend.half_gemm_mode(torch.bfloat16) == expected
    monkeypatch.setattr(cpu_backend, "_FLAGS", frozenset({"amx_bf16"}))
    assert cpu_backend.half_gemm_mode(torch.float16) == "float32"  # AMX-BF16 does not make float16 fast
    monkeypatch.setenv("GPACO_CPU_HALF_GEMM", "fast")
    with pytest.raises(ValueError, match="GPACO_CPU_HALF_GEMM must be 'mkl' or 'float32', got 'fast'"):
        cpu_backend.half_gemm_mode(torch.bfloat16)


def test_few_classes_take_the_masked_pass():
    """Dense positives (3 labels over 600 columns: a third of every row) go through the masked vector passes; the
    self column is left out of them. Against the float64 reference, in float32 and float64."""
    gen = torch.Generator().manual_seed(7)
    feats = torch.nn.functional.normalize(torch.randn(600, 16, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 3, (600,), generator=gen)
    kw = dict(num_anchors=37, queue=feats[:50].flip(1), queue_labels=labels[:50], alpha=0.7, temperature=0.2)
    upstream = torch.linspace(0.5, 1.5, 37, dtype=torch.float64)
    want_f = feats.clone().requires_grad_()
    want = gk.fused_paco_loss(want_f, labels, backend="reference", reduction="none", **kw)
    (want_g,) = torch.autograd.grad(want, [want_f], upstream)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        f = feats.to(dtype).requires_grad_()
        args = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
        got = gk.fused_paco_loss(f, labels, backend="cpu", reduction="none", **args)
        (got_g,) = torch.autograd.grad(got, [f], upstream.to(dtype))
        assert_close(got, want, atol=tol, rtol=tol, name=f"loss {dtype}")
        assert_close(got_g, want_g, atol=tol, rtol=tol, name=f"gradient {dtype}")
