"""Public surface: import without a GPU or extension, backends listed, reductions and dtypes of the result."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import gpaco_kernels as gk

from helpers import assert_close, need_backend


def test_import_and_version_need_no_gpu_or_extension():
    code = "import gpaco_kernels as g; print(g.__version__, g.HAS_CPU_EXT, g.HAS_TRITON, g.available_backends())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""},
    ).stdout.split()
    assert out[0] == gk.__version__ and out[0].count(".") == 2
    assert "'torch'" in " ".join(out) and "'reference'" in " ".join(out)


def test_reductions_agree():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(10, 4, generator=gen)
    labels = torch.tensor([0, 1, 0, -100, 1, 2, 2, 0, -100, 1])
    per_anchor = gk.fused_paco_loss(feats, labels, reduction="none")
    assert per_anchor.shape == (10,) and per_anchor[3] == 0 and per_anchor[8] == 0
    assert_close(gk.fused_paco_loss(feats, labels, reduction="sum"), per_anchor.sum(), atol=1e-6, rtol=1e-6)
    # 'mean' divides by the 8 anchors that are not ignored.
    assert_close(gk.fused_paco_loss(feats, labels), per_anchor.sum() / 8, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_result_and_gradients_keep_the_input_dtype(dtype):
    feats = torch.randn(6, 3).to(dtype).requires_grad_()
    logits = torch.randn(6, 2).to(dtype).requires_grad_()
    loss = gk.fused_paco_loss(feats, torch.tensor([0, 1, 0, 1, 1, 0]), center_logits=logits)
    loss.backward()
    assert loss.dtype == dtype and feats.grad.dtype == dtype and logits.grad.dtype == dtype
    assert torch.isfinite(loss) and torch.isfinite(feats.grad).all()


def test_auto_picks_an_available_backend():
    from gpaco_kernels.ops import resolve_backend

    assert resolve_backend("auto") in gk.available_backends()
    assert resolve_backend("auto") != "reference"


def test_backends_are_matched_to_the_tensors_device():
    from gpaco_kernels.ops import resolve_backend

    assert "cpu" not in gk.available_backends("cuda")
    assert resolve_backend("auto", "cuda") == ("triton" if gk.HAS_TRITON else "torch")
    with pytest.raises(ValueError, match="backend='cpu' cannot run on cuda tensors.*'triton' or 'torch'"):
        resolve_backend("cpu", "cuda")


@pytest.mark.skipif(not gk.HAS_TRITON, reason="triton is not installed")
def test_triton_on_cpu_tensors_without_the_interpreter_says_it_needs_cuda():
    code = (
        "import torch, gpaco_kernels as g\n"
        "assert 'triton' not in g.available_backends('cpu'), g.available_backends('cpu')\n"
        "try:\n"
        "    g.fused_paco_loss(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), backend='triton')\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert "backend='triton' cannot run on cpu tensors" in out and "TRITON_INTERPRET=1" in out


@pytest.mark.parametrize(
    "functional,module,options_cls",
    [
        (gk.fused_paco_loss, gk.FusedPaCoLoss, "PaCoOptions"),
        (gk.fused_supcon_loss, gk.SupConLoss, "SupConOptions"),
        (gk.fused_psc_loss, gk.PSCLoss, "PSCOptions"),
    ],
)
def test_options_are_written_once(functional, module, options_cls):
    """Each loss's options and defaults live in gpaco_kernels.options: the functional's keyword arguments and the
    module's constructor list exactly those, with those defaults; the argument check defaults to the PaCo ones."""
    import dataclasses
    import inspect

    from gpaco_kernels import functional as fn
    from gpaco_kernels import options

    declared = {f.name: f.default for f in dataclasses.fields(getattr(options, options_cls))}
    per_call = {"num_anchors", "queue", "queue_labels", "center_logits", "centers", "class_counts", "process_group"}
    params = inspect.signature(functional).parameters.values()
    keywords = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in per_call}
    assert keywords == declared
    built = {p.name: p.default for p in inspect.signature(module).parameters.values() if p.name in declared}
    assert built == declared
    positional = {"num_classes": 3, "dim": 4} if module is gk.PSCLoss else {}
    assert dataclasses.asdict(module(**positional).options) == declared
    if options_cls == "PaCoOptions":  # normalize is applied before the check, in _paco_loss
        checked = {p.name: p.default for p in inspect.signature(fn.canonicalize).parameters.values()}
        assert {k: checked[k] for k in declared if k != "normalize"} == {
            k: declared[k] for k in declared if k != "normalize"
        }


def test_modules_name_a_misspelt_option():
    with pytest.raises(TypeError, match=r"FusedPaCoLoss got unknown option\(s\) alpa; its options are alpha, beta"):
        gk.FusedPaCoLoss(alpa=0.1)
    with pytest.raises(TypeError, match=r"SupConLoss got unknown option\(s\) temprature"):
        gk.SupConLoss(temprature=0.1)
    loss_fn = gk.SupConLoss(temperature=0.1)
    loss_fn.options.temperature = 0.2  # a schedule changes the next call
    feats = torch.nn.functional.normalize(torch.randn(6, 2, 4), dim=-1)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    assert_close(loss_fn(feats, labels), gk.fused_supcon_loss(feats, labels, temperature=0.2), atol=0, rtol=0, name="t")


@pytest.mark.parametrize(
    "dtype,dim,want",
    [(torch.float32, 128, "triton"), (torch.bfloat16, 64, "triton"), (torch.float64, 128, "torch"),
     (torch.float32, 256, "triton"), (torch.float16, 1024, "triton"), (torch.bfloat16, 136, "triton"),
     (torch.float64, 1024, "torch")],
)  # fmt: skip
def test_auto_on_cuda_never_picks_a_backend_that_refuses_the_inputs(dtype, dim, want):
    """float64 goes to the 'torch' backend, which takes any dtype; every feature dim to triton (past 128 its wide
    kernels)."""
    from gpaco_kernels.ops import resolve_backend

    if not gk.HAS_TRITON:
        want = "torch"
    assert resolve_backend("auto", "cuda", dtype, dim) == want


@pytest.mark.parametrize(
    "dtype,dim,what", [(torch.float64, 8, "float32, bfloat16 or float16"), (torch.float64, 136, "float32, bfloat16")]
)
def test_an_explicit_triton_that_cannot_take_the_inputs_names_them_and_what_would_run(dtype, dim, what):
    need_backend("triton")
    feats = torch.randn(6, 2, dim, dtype=dtype)
    with pytest.raises(ValueError) as info:
        gk.fused_supcon_loss(feats, torch.tensor([0, 1, 0, 1, 2, 2]), backend="triton")
    said = str(info.value)
    assert f"backend='triton' cannot take features of dtype {str(dtype)[6:]} and feature dim {dim}" in said, said
    assert what in said and "backend='auto' runs 'cpu' for these inputs" in said, said
