"""torch.compile's AOT dispatch traced through the Triton backend's host code, forward and backward, for every
launch variant, without a GPU.

Under torch.compile the op is a torch.library.triton_op: AOT dispatch runs the launchers (triton/launch.py) on
FunctionalTensors, which have no data pointer and no values. On a GPU, wrap_triton turns each launch into a node of
the graph; here a recording launcher takes its place (launch.traced), notes each kernel, its grid and its constexpr
flags, and launches nothing. The compiler of the forward graph, called once AOT autograd has traced the joint
forward and backward graph, ends the compile with TraceComplete: everything the launchers do under torch.compile
ran, and nothing ran on tensors without storage. A launcher that reads a data pointer, a value or a Python number
from a tensor raises inside the trace instead.

The interpreter's own refusal (what the compiled step meets without the recording launcher, once the trace reaches a
kernel) is checked too, by where it is raised: inside Triton's interpreter, not in this package.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._subclasses.functional_tensor import FunctionalTensor

import gpaco_kernels as gk

from helpers import TRITON_DEVICE, assert_refused_by_the_interpreter, exception_chain, innermost_frame, need_backend

launch = pytest.importorskip("gpaco_kernels.triton.launch")

pytestmark = pytest.mark.skipif(TRITON_DEVICE != "cpu", reason="traces under the interpreter (CPU tensors)")


class TraceComplete(Exception):
    """Raised by the forward graph's compiler: the joint graph was traced to its end."""


def _stop(gm, example_inputs):
    raise TraceComplete


TRACE_ONLY = aot_autograd(fw_compiler=_stop)


def _kernel_name(kernel) -> str:
    while hasattr(kernel, "fn"):  # Autotuner -> JITFunction / InterpretedFunction -> the Python function
        kernel = kernel.fn
    return kernel.__name__


class Recorder:
    """A `launch` (launch.traced's stand-in): records every launch and runs nothing."""

    def __init__(self):
        self.launches = []

    def __call__(self, kernel):
        recorder = self

        class _Launch:
            def __getitem__(self, grid):
                def run(*args, **kwargs):
                    meta = dict(getattr(kernel, "configs", [None])[0].kwargs) if hasattr(kernel, "configs") else {}
                    shape = grid({**meta, **kwargs}) if callable(grid) else grid
                    tensors = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a)]
                    recorder.launches.append(
                        dict(
                            name=_kernel_name(kernel),
                            grid=tuple(shape),
                            flags={k: v for k, v in kwargs.items() if k.isupper()},
                            traced=all(isinstance(t, FunctionalTensor) for t in tensors),
                        )
                    )

                return run

        return _Launch()

    def named(self, name):
        return [r for r in self.launches if r["name"] == name]


def _trace(step, *args) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(step, backend=TRACE_ONLY, fullgraph=True)
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as info:  # the forward graph's compiler raised
        compiled(*args)
    chain = exception_chain(info.value)
    assert type(chain[-1]) is TraceComplete, f"the trace stopped early, at {innermost_frame(info.value)}: {chain[-1]!r}"


# name: (features, labels, class block, queue, reduction); every one traced with torch.compile.
def _problem(n, d, *, classes, queue, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=gen, dtype=dtype).requires_grad_()
    labels = torch.randint(0, 5, (n,), generator=gen)
    kw = {}
    if classes == "logits":
        kw["center_logits"] = torch.randn(n, 5, generator=gen, dtype=dtype).requires_grad_()
        kw["class_counts"] = [5, 4, 3, 2, 1]
    elif classes == "centers":
        kw["centers"] = torch.randn(5, d, generator=gen, dtype=dtype).requires_grad_()
    if queue:
        kw["queue"] = torch.randn(queue, d, generator=gen, dtype=dtype)
        kw["queue_labels"] = torch.randint(0, 5, (queue,), generator=gen)
    return feats, labels, kw


def _step(feats, labels, kw, reduction):
    def step(f, y):
        return gk.fused_paco_loss(f, y, **kw, normalize=True, reduction=reduction, backend="triton").sum()

    return step


@pytest.fixture
def recorder(monkeypatch):
    need_backend("triton", "cpu")
    rec = Recorder()
    monkeypatch.setattr(launch, "wrap_triton", rec)
    return rec


def _assert_traced_step(rec: Recorder, *, label_sums, batch_grad=True, one_pass=False, splits=1):
    """Every kernel of the step's forward and backward was reached, with the flags of the variant. (AOT autograd
    runs the forward twice, once for its metadata and once in the joint graph: the checks hold for every launch.)"""
    assert rec.launches, "nothing was launched"
    assert all(r["traced"] for r in rec.launches), "a launch outside the trace (tensors with storage)"
    names = {r["name"] for r in rec.launches}
    want = {"_paco_fwd_kernel", "_paco_finalize_kernel", "_paco_bwd_rows_kernel", "_paco_epilogue_kernel"}
    if batch_grad:
        want.add("_paco_bwd_cols_kernel")
    if label_sums:
        want.add("_paco_label_sums_kernel")
    assert want <= names and ("_paco_label_sums_kernel" in names) is label_sums, names
    # the compiled path never loads by descriptors: Inductor launches the kernels outside _descriptor_scratch
    assert {r["flags"].get("TMA", False) for r in rec.launches} == {False}
    assert {r["flags"]["LABEL_SUMS"] for r in rec.named("_paco_fwd_kernel")} == {label_sums}
    assert {r["grid"][1] for r in rec.named("_paco_fwd_kernel") + rec.named("_paco_bwd_rows_kernel")} == {splits}
    assert {r["flags"]["BATCH_BY_COLUMNS"] for r in rec.named("_paco_bwd_rows_kernel")} == {one_pass}
    batch_cols = [r for r in rec.named("_paco_bwd_cols_kernel") if r["flags"]["SEGMENT"] == 1]
    assert {r["flags"]["ANCHOR_GRAD"] for r in batch_cols} == ({one_pass} if batch_grad else set())


# The README's headline cases at their sizes, with no setting forced: positives by label sums from 2^24 pairs.
def test_compiled_supcon_at_8192_samples_traces_to_every_launch(recorder):
    feats = torch.randn(4096, 2, 16).requires_grad_()
    labels = torch.randint(0, 100, (4096,))

    def step(f, y):
        return gk.fused_supcon_loss(f, y, normalize=True, backend="triton")

    _trace(step, feats, labels)
    _assert_traced_step(recorder, label_sums=True)


def test_compiled_pixel_loss_at_8192_pixels_traces_to_every_launch(recorder):
    feats, labels, kw = _problem(8192, 16, classes="logits", queue=0)
    del kw["class_counts"]
    labels[::7] = 255
    _trace(_step(feats, labels, {**kw, "ignore_index": 255}, "mean"), feats, labels)
    _assert_traced_step(recorder, label_sums=True)


@pytest.mark.parametrize("tma", ["auto", "1", "0"])
@pytest.mark.parametrize("label_sums", [False, True])
@pytest.mark.parametrize(
    "classes,queue",
    [("logits", 12), ("centers", 0), (None, 12), (None, 0)],
    ids=["logits+queue", "centers", "queue", "batch"],
)
def test_every_launch_variant_traces_forward_and_backward(recorder, monkeypatch, tma, label_sums, classes, queue):
    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", label_sums)
    monkeypatch.setattr(launch, "TMA", tma)
    feats, labels, kw = _problem(21, 8, classes=classes, queue=queue)
    _trace(_step(feats, labels, kw, "mean"), feats, labels)
    _assert_traced_step(recorder, label_sums=label_sums)
    if classes == "centers":
        assert any(r["flags"]["SEGMENT"] == 0 for r in recorder.named("_paco_bwd_cols_kernel"))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_split_columns_trace(recorder, monkeypatch, reduction):
    monkeypatch.setattr(launch, "FORCE_COLS_PER_SPLIT", 16)
    feats, labels, kw = _problem(21, 8, classes="logits", queue=12)
    _trace(_step(feats, labels, kw, reduction), feats, labels)
    _assert_traced_step(recorder, label_sums=False, splits=3)  # 5 classes + 21 + 12 columns in ranges of 16


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_one_pass_backward_traces(recorder, monkeypatch, dtype):
    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", True)
    monkeypatch.setattr(launch, "BACKWARD", "one-pass")
    feats, labels, kw = _problem(21, 8, classes="logits", queue=12, dtype=dtype)
    _trace(_step(feats, labels, kw, "mean"), feats, labels)
    _assert_traced_step(recorder, label_sums=True, one_pass=True)


def test_forced_descriptor_loads_trace_with_alignment_from_the_storage_offset(recorder, monkeypatch):
    """FORCE_TMA (tests only) asks for the rows' alignment: from the storage offset of a traced tensor, which has
    no data pointer."""
    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", True)
    monkeypatch.setattr(launch, "FORCE_TMA", True)
    feats, labels, kw = _problem(21, 8, classes=None, queue=12)
    _trace(_step(feats, labels, kw, "mean"), feats, labels)
    assert {r["flags"]["TMA"] for r in recorder.launches if "TMA" in r["flags"]} == {True}


def test_without_the_recorder_the_interpreter_refuses_inside_triton():
    """The same compiled step with wrap_triton: the trace reaches the first kernel launch, where Triton's interpreter
    refuses to run a kernel on tensors without storage. The error must come from there, not from this package."""
    need_backend("triton", "cpu")
    feats = torch.randn(4096, 2, 16).requires_grad_()
    labels = torch.randint(0, 100, (4096,))

    def step(f, y):
        return gk.fused_supcon_loss(f, y, normalize=True, backend="triton")

    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as info:
        torch.compile(step, backend="aot_eager", fullgraph=True)(feats, labels)
    assert_refused_by_the_interpreter(info.value)
