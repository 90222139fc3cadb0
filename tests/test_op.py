"""The one op: every backend's pair of operators has the same schema, passes torch.library.opcheck (schema, fake
implementation, autograd registration, AOT dispatch), and a training step compiles with torch.compile(fullgraph=True).
Triton runs under the interpreter here; what the toolchain refuses there is asserted with the error it gives."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.testing._internal.optests.generate_tests import OpCheckError

import gpaco_kernels as gk
from gpaco_kernels.functional import canonicalize
from gpaco_kernels.ops.dispatch import load_backend
from gpaco_kernels.ops.op import call_forward

from helpers import (
    BACKENDS,
    GPU,
    NEEDS_CUDA,
    TRITON_DEVICE,
    assert_close,
    assert_refused_by_the_interpreter,
    need_backend,
)

# What opcheck runs; the interpreter cannot run AOT dispatch of a triton_op (below).
ALL_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _ops(backend, device="cpu"):
    need_backend(backend, device)
    return load_backend(backend).OPS


def _problem(variant, dtype, seed=0, device="cpu"):
    if device != "cpu":
        x, cfg = _problem(variant, dtype, seed)
        moved = {
            k: v.detach().to(device).requires_grad_(v.requires_grad) if torch.is_tensor(v) else v
            for k, v in vars(x).items()
        }
        return type(x)(**moved), cfg
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(11, 5, generator=gen, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 3, (11,), generator=gen)
    kw = dict(num_anchors=7, queue=torch.randn(6, 5, generator=gen).to(dtype), queue_labels=torch.randint(0, 3, (6,)))
    if variant == "centers":
        kw.update(centers=torch.randn(3, 5, generator=gen).to(dtype).requires_grad_(), label_smoothing=0.1)
    elif variant == "logits":
        kw.update(center_logits=torch.randn(7, 3, generator=gen).to(dtype).requires_grad_(), class_counts=[3, 2, 1])
    return canonicalize(feats, labels, **kw)[:2]


def _dtypes(backend):
    return [torch.float32, torch.float16] if backend == "triton" else [torch.float64, torch.float32, torch.bfloat16]


def _checks(backend):
    """Under the interpreter a triton_op cannot be AOT-dispatched (its kernels would run on tensors without storage:
    tests/test_compile_trace.py traces that path); compiled, every check runs."""
    return ALL_CHECKS[:3] if backend == "triton" and TRITON_DEVICE == "cpu" else ALL_CHECKS


def test_every_backend_has_the_same_schema():
    schemas = {}
    for backend in BACKENDS:
        forward, backward = _ops(backend)
        schemas[backend] = tuple(str(op._opoverload._schema).split("(", 1)[1] for op in (forward, backward))
    assert len(set(schemas.values())) == 1, schemas


# (reduction, normalize) pairs the op is checked with: each reduction, and normalization inside the op.
OP_MODES = [("none", False), ("mean", True), ("sum", False)]


def _params(cfg, reduction, normalize):
    return dataclasses.replace(cfg.op_params(), reduction=reduction, normalize=normalize)


def _grad_loss(p, like):
    if p.reduction == "none":
        return torch.linspace(-1, 2, p.num_anchors, dtype=like.dtype, device=like.device)
    return torch.tensor(-1.75, dtype=like.dtype, device=like.device)


@pytest.mark.parametrize("variant", ["logits", "centers", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_forward(backend, variant):
    forward, _ = _ops(backend)
    unit_options = [False, True] if getattr(load_backend(backend), "UNIT_GRADIENTS", False) else [False]
    for dtype in _dtypes(backend):
        x, cfg = _problem(variant, dtype)
        for reduction, normalize in OP_MODES:
            for unit in unit_options:
                args = (*x.tensors(), *_params(cfg, reduction, normalize).astuple(), unit)
                torch.library.opcheck(forward._opoverload, args, test_utils=_checks(backend))


@pytest.mark.parametrize("variant", ["logits", "centers", "none"])  # none: two absent gradients, distinct tensors
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_backward(backend, variant):
    forward, backward = _ops(backend)
    for dtype in _dtypes(backend):
        x, cfg = _problem(variant, dtype)
        for reduction, normalize in OP_MODES:
            p = _params(cfg, reduction, normalize)
            with torch.no_grad():
                loss, lse, pos, counted, *units = call_forward(forward, x, p, False)
            needs = (True, x.center_logits is not None, x.centers is not None)
            tensors = [t.detach() if t is not None else None for t in x.tensors()]
            args = (*tensors, *p.astuple(), lse, pos, counted, _grad_loss(p, loss))
            torch.library.opcheck(backward._opoverload, (*args, *units, *needs), test_utils=_checks(backend)[:3])


@pytest.mark.skipif(TRITON_DEVICE != "cpu", reason="the interpreter is off: the CUDA test below runs instead")
def test_triton_aot_dispatch_is_refused_under_the_interpreter():
    """AOT dispatch traces into a triton_op (that is what lets torch.compile see the kernels on a GPU); under the
    interpreter the traced kernel is then run on tensors without storage, which the interpreter refuses."""
    forward, _ = _ops("triton")
    x, cfg = _problem("logits", torch.float32)
    args = (*x.tensors(), *cfg.op_params().astuple(), False)
    with pytest.raises(OpCheckError) as info:
        torch.library.opcheck(forward._opoverload, args, test_utils=("test_aot_dispatch_dynamic",))
    assert_refused_by_the_interpreter(info.value)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(6, 5)
        self.head = torch.nn.Linear(5, 3)


def _step(net, inputs, labels, queue, queue_labels, backend, reduction):
    feats = net.body(inputs)
    out = gk.fused_paco_loss(
        feats,
        labels,
        queue=queue,
        queue_labels=queue_labels,
        center_logits=net.head(feats),
        class_counts=[3, 2, 1],
        alpha=0.5,
        normalize=True,
        backend=backend,
        reduction=reduction,
    )
    return out.sum() * 1.5 if reduction == "none" else out


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_step_compiles_with_fullgraph(backend, reduction):
    need_backend(backend)
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = _Net()
    inputs, labels = torch.randn(10, 6, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    queue, queue_labels = torch.randn(4, 5, generator=gen), torch.randint(0, 3, (4,), generator=gen)
    args = (inputs, labels, queue, queue_labels, backend, reduction)

    want = _step(net, *args)
    want_grads = torch.autograd.grad(want, list(net.parameters()))
    compiled = torch.compile(_step, fullgraph=True)
    if backend == "triton":
        with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as info:
            compiled(net, *args)
        assert_refused_by_the_interpreter(info.value)  # tests/test_compile_trace.py traces on past the launches
        return
    got = compiled(net, *args)
    got_grads = torch.autograd.grad(got, list(net.parameters()))
    assert_close(got, want, atol=2e-5, rtol=2e-5, name="compiled loss")
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, atol=2e-5, rtol=2e-5, name="compiled gradient")


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=f"{NEEDS_CUDA}: compiled Triton kernels")


@GPU
@needs_cuda
@pytest.mark.parametrize("variant", ["logits", "centers", "none"])
def test_triton_opcheck_on_cuda_with_aot_dispatch(variant):
    """What the interpreter refuses above, on a GPU: every opcheck, AOT dispatch included, on the compiled kernels."""
    forward, backward = _ops("triton", "cuda")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x, cfg = _problem(variant, dtype, device="cuda")
        for reduction, normalize in OP_MODES:
            p = _params(cfg, reduction, normalize)
            args = (*x.tensors(), *p.astuple(), False)
            torch.library.opcheck(forward._opoverload, args, test_utils=ALL_CHECKS)
            if variant == "none":
                continue
            with torch.no_grad():
                loss, lse, pos, counted, *units = call_forward(forward, x, p, False)
            needs = (True, x.center_logits is not None, x.centers is not None)
            tensors = [t.detach() if t is not None else None for t in x.tensors()]
            bargs = (*tensors, *p.astuple(), lse, pos, counted, _grad_loss(p, loss))
            torch.library.opcheck(backward._opoverload, (*bargs, *units, *needs), test_utils=ALL_CHECKS)


@GPU
@needs_cuda
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_triton_training_step_compiles_with_fullgraph_on_cuda(reduction):
    need_backend("triton", "cuda")
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = _Net().cuda()
    inputs, labels = torch.randn(10, 6, generator=gen).cuda(), torch.randint(0, 3, (10,), generator=gen).cuda()
    queue, queue_labels = torch.randn(4, 5, generator=gen).cuda(), torch.randint(0, 3, (4,), generator=gen).cuda()
    args = (inputs, labels, queue, queue_labels, "triton", reduction)
    want = _step(net, *args)
    want_grads = torch.autograd.grad(want, list(net.parameters()))
    got = torch.compile(_step, fullgraph=True)(net, *args)
    got_grads = torch.autograd.grad(got, list(net.parameters()))
    assert_close(got, want, atol=2e-5, rtol=2e-5, name="compiled loss")
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, atol=2e-5, rtol=2e-5, name="compiled gradient")


@GPU
@pytest.mark.parametrize("backward_shape", ["two-kernel", "one-pass"])  # launch.BACKWARD
@pytest.mark.parametrize("variant", ["logits", "none"])  # group ids from class labels, and from any labels
def test_triton_opcheck_on_the_label_sums_path(variant, backward_shape, monkeypatch):
    """The large-step path (positives by label sums: group ids by sort and search, a sums kernel per direction)
    passes the same opchecks, fake tensors included, with either backward shape."""
    need_backend("triton", TRITON_DEVICE)
    from gpaco_kernels.triton import launch

    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", True)
    monkeypatch.setattr(launch, "BACKWARD", backward_shape)
    forward, backward = _ops("triton", TRITON_DEVICE)
    for dtype in _dtypes("triton"):
        x, cfg = _problem(variant, dtype, device=TRITON_DEVICE)
        for reduction, normalize in OP_MODES:
            p = _params(cfg, reduction, normalize)
            torch.library.opcheck(
                forward._opoverload, (*x.tensors(), *p.astuple(), False), test_utils=_checks("triton")
            )
            with torch.no_grad():
                loss, lse, pos, counted, *units = call_forward(forward, x, p, False)
            needs = (True, x.center_logits is not None, x.centers is not None)
            tensors = [t.detach() if t is not None else None for t in x.tensors()]
            args = (*tensors, *p.astuple(), lse, pos, counted, _grad_loss(p, loss))
            torch.library.opcheck(backward._opoverload, (*args, *units, *needs), test_utils=_checks("triton")[:3])
