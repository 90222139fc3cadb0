"""The host path of a training step: no value read back to the host, few device launches, the prior computed once.

On a GPU a value read is a stream synchronization and every launch costs microseconds of host time; on this
project's CPU machines the same properties are checked without one:

- every public loss runs forward and backward on `meta` tensors (tensors without values: a read raises there, and
  tools.launch_count.StepTrace counts every op that would read one) with backend="torch", through the same
  argument checks, prior and dispatch a CUDA call takes;
- the triton backend, under the interpreter on CPU tensors, runs a GPaCo long-tail step and a pixel step within the
  launch budget (Triton kernels plus ATen ops that launch on the device) and reads nothing back;
- a wrong label is never a silent wrong number: a ValueError naming the argument where values are on the host
  (CPU tensors, or sync_checks(True)), a device-side assert from the Triton kernels otherwise.

On a GPU the CUDA-graph and torch.compile(mode="reduce-overhead") tests at the end run as well.
"""

from __future__ import annotations

import pytest
import torch

import gpaco_kernels as gk
from gpaco_kernels import compat
from gpaco_kernels.compat import pml  # noqa: F401  (compat.pml)
from tools.launch_count import StepTrace

from helpers import GPU, NEEDS_CUDA, TRITON_DEVICE, need_backend

# A GPaCo long-tail step and a pixel step on the triton backend: at most this many device launches (fwd + bwd).
LAUNCH_BUDGET = 8
# ATen ops a triton step may launch besides its kernels: the device-side label assert and autograd's seed gradient;
# SupCon also stacks its (bsz, n_views, D) views view-major and repeats the labels per view (two copies).
STEP_ATEN_OPS = {"_assert_async", "ones_like", "fill_"}
LAYOUT_OPS = {"supcon": {"clone", "repeat"}}
# Positives by label sums: per direction the group ids (ops/spec.py label_groups) and the sums kernel.
GROUP_ID_OPS = {"cat", "sort", "arange", "searchsorted"}
LABEL_SUMS_LAUNCHES = 12

A, K, C, D = 8, 64, 16, 16


def _gen(device):
    return dict(device=device, dtype=torch.float32)


def _labels(n, device, high=C):
    return torch.randint(0, high, (n,), device=device)


def _leaf(*shape, device):
    return torch.randn(*shape, **_gen(device)).requires_grad_()


# Each builder returns (loss function of no arguments, the leaves that take a gradient, its named inputs); all
# tensors on `device`.
def _gpaco_logits_prior(device, backend):
    feats, logits = _leaf(A, D, device=device), _leaf(A, C, device=device)
    labels, queue, queue_labels = _labels(A, device), torch.randn(K, D, **_gen(device)), _labels(K, device)
    counts = torch.arange(1, C + 1, device=device, dtype=torch.float64) * 10

    def loss():
        return gk.fused_paco_loss(
            feats, labels, queue=queue, queue_labels=queue_labels, center_logits=logits, class_counts=counts,
            alpha=0.05, normalize=True, backend=backend,
        )  # fmt: skip

    return loss, [feats, logits], dict(labels=labels, queue_labels=queue_labels, class_counts=counts)


def _paco_centers(device, backend):
    feats, centers = _leaf(2 * A, D, device=device), _leaf(C, D, device=device)
    labels, queue, queue_labels = _labels(2 * A, device), torch.randn(K, D, **_gen(device)), _labels(K, device)
    counts = list(range(1, C + 1))

    def loss():
        return gk.fused_paco_loss(
            feats, labels, num_anchors=A, queue=queue, queue_labels=queue_labels, centers=centers,
            class_counts=counts, label_smoothing=0.1, normalize=True, backend=backend,
        )  # fmt: skip

    return loss, [feats, centers], {}


def _pixel(device, backend):
    n = 4 * A
    feats, logits = _leaf(n, D, device=device), _leaf(n, C, device=device)
    labels = _labels(n, device)
    labels[::5] = 255  # ignored pixels

    def loss():
        return gk.fused_paco_loss(
            feats, labels, center_logits=logits, ignore_index=255, normalize=True, backend=backend
        )

    return loss, [feats, logits], {}


def _supcon(device, backend):
    feats = _leaf(A, 2, D, device=device)
    labels = _labels(A, device, high=3)

    def loss():
        return gk.fused_supcon_loss(feats, labels, normalize=True, backend=backend)

    return loss, [feats], {}


def _psc(device, backend):
    feats, prototypes = _leaf(2 * A, D, device=device), _leaf(C, D, device=device)
    labels = _labels(2 * A, device)

    def loss():
        return gk.fused_psc_loss(feats, labels, prototypes, backend=backend)

    return loss, [feats, prototypes], {}


def _module(device, backend):
    module = gk.FusedPaCoLoss(class_counts=list(range(1, C + 1)), alpha=0.05, normalize=True, backend=backend)
    module.to(device)
    feats, logits = _leaf(A, D, device=device), _leaf(A, C, device=device)
    labels, queue, queue_labels = _labels(A, device), torch.randn(K, D, **_gen(device)), _labels(K, device)

    def loss():
        return module(feats, labels, queue=queue, queue_labels=queue_labels, center_logits=logits)

    return loss, [feats, logits], {}


def _compat_paco(device, backend):
    module = compat.PaCoLoss(alpha=0.05, K=K, num_classes=C, backend=backend)
    module.cal_weight_for_classes(list(range(1, C + 1)))
    module.to(device)
    feats, logits = _leaf(2 * A + K, D, device=device), _leaf(A, C, device=device)
    labels = _labels(2 * A + K, device)

    def loss():
        return module(feats, labels, logits)

    return loss, [feats, logits], {}


def _compat_gpaco(device, backend):
    module = compat.GPaCoLoss(alpha=0.05, K=K, num_classes=C, smooth=0.1, backend=backend)
    module.cal_weight_for_classes(list(range(1, C + 1)))
    module.to(device)
    feats, logits = _leaf(A + K, D, device=device), _leaf(A, C, device=device)
    labels = _labels(A + K, device)

    def loss():
        return module(feats, labels, logits)

    return loss, [feats, logits], {}


def _compat_seg(device, backend):
    module = compat.PaCoSegLoss(alpha=0.05, num_classes=C, backend=backend)
    feats, logits = _leaf(4 * A, D, device=device), _leaf(4 * A, C, device=device)
    labels = _labels(4 * A, device, high=C + 1)  # label C: ignored pixel

    def loss():
        return module(feats, labels, logits)

    return loss, [feats, logits], {}


def _compat_supcon(device, backend):
    module = compat.SupConLoss(backend=backend)
    feats = _leaf(A, 2, D, device=device)
    labels = _labels(A, device, high=3)

    def loss():
        return module(feats, labels)

    return loss, [feats], {}


def _pml_supcon(device, backend):
    module = compat.pml.SupConLoss(temperature=0.1, backend=backend)
    feats, labels = _leaf(4 * A, D, device=device), _labels(4 * A, device, high=3)

    def loss():
        return module(feats, labels)

    return loss, [feats], {}


def _pml_memory(device, backend):
    memory = compat.pml.CrossBatchMemory(compat.pml.SupConLoss(temperature=0.1, backend=backend), D, memory_size=K)
    memory.has_been_filled = True  # a full memory: the batch against K - A older slots and itself
    feats, labels = _leaf(A, D, device=device), _labels(A, device, high=3)

    def loss():
        return memory(feats, labels)

    return loss, [feats], {}


STEPS = {
    "gpaco-logits-prior": _gpaco_logits_prior,
    "paco-centers": _paco_centers,
    "pixel": _pixel,
    "supcon": _supcon,
    "psc": _psc,
    "FusedPaCoLoss": _module,
    "compat.PaCoLoss": _compat_paco,
    "compat.GPaCoLoss": _compat_gpaco,
    "compat.PaCoSegLoss": _compat_seg,
    "compat.SupConLoss": _compat_supcon,
    "compat.pml.SupConLoss": _pml_supcon,
    "compat.pml.CrossBatchMemory": _pml_memory,
}


def _traced_step(loss_fn, leaves) -> StepTrace:
    with StepTrace() as trace:
        loss = loss_fn()
        grads = torch.autograd.grad(loss, leaves)
    assert all(g.shape == t.shape for g, t in zip(grads, leaves))
    return trace


@pytest.mark.parametrize("step", sorted(STEPS))
def test_public_loss_reads_no_value_on_meta_tensors(step):
    """Forward and backward through the public host path on tensors without values: nothing is read back (on a GPU,
    no stream synchronization), the label and class-count checks included."""
    loss_fn, leaves, _ = STEPS[step]("meta", "torch")
    trace = _traced_step(loss_fn, leaves)
    assert trace.reads == 0, f"{step}: {trace.summary()}"
    assert trace.launches > 0, f"{step}: the trace saw nothing: {trace.summary()}"


@GPU
@pytest.mark.parametrize("step", ["gpaco-logits-prior", "pixel", "paco-centers", "psc", "supcon"])
def test_triton_step_is_within_the_launch_budget_and_reads_nothing(step):
    need_backend("triton", TRITON_DEVICE)
    loss_fn, leaves, _ = STEPS[step](TRITON_DEVICE, "triton")
    torch.autograd.grad(loss_fn(), leaves)  # a first step: the prior is computed and cached, kernels are set up
    trace = _traced_step(loss_fn, leaves)
    assert trace.reads == 0, f"{step}: {trace.summary()}"
    assert trace.launches <= LAUNCH_BUDGET, f"{step}: {trace.summary()}"
    allowed = STEP_ATEN_OPS | LAYOUT_OPS.get(step, set())
    assert set(trace.aten_launches) <= allowed, f"{step}: ATen work around the kernels: {trace.summary()}"
    assert sum(trace.triton_launches.values()) >= 3, f"{step}: {trace.summary()}"  # forward, finalize, backward


@GPU
@pytest.mark.parametrize("step", ["gpaco-logits-prior", "pixel", "paco-centers", "supcon"])
def test_triton_step_with_label_sums_reads_nothing_and_adds_only_the_group_ids(step, monkeypatch):
    """Positives by label sums (the large-step path): still no host read; per direction one sums kernel and the
    group ids' sort and binary searches (a cat with a queue), nothing else."""
    need_backend("triton", TRITON_DEVICE)
    from gpaco_kernels.triton import launch

    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", True)
    loss_fn, leaves, _ = STEPS[step](TRITON_DEVICE, "triton")
    torch.autograd.grad(loss_fn(), leaves)
    trace = _traced_step(loss_fn, leaves)
    assert trace.reads == 0, f"{step}: {trace.summary()}"
    assert trace.launches <= LAUNCH_BUDGET + LABEL_SUMS_LAUNCHES, f"{step}: {trace.summary()}"
    allowed = STEP_ATEN_OPS | LAYOUT_OPS.get(step, set()) | GROUP_ID_OPS
    assert set(trace.aten_launches) <= allowed, f"{step}: ATen work around the kernels: {trace.summary()}"
    assert trace.triton_launches["_paco_label_sums_kernel"] == 2, trace.summary()


@GPU
def test_the_prior_is_computed_once_per_counts_and_again_when_they_change():
    need_backend("triton", TRITON_DEVICE)
    loss_fn, _, inputs = STEPS["gpaco-logits-prior"](TRITON_DEVICE, "triton")
    first = loss_fn().item()
    with StepTrace() as trace:
        again = loss_fn()
    assert again.item() == first
    assert set(trace.aten_launches) <= STEP_ATEN_OPS, trace.summary()  # no prior ops: it came from the cache
    # The same counts changed in place: a new version, so a new prior and a different loss.
    inputs["class_counts"][0] += 1000
    assert loss_fn().item() != first


def test_prior_cache_gives_the_prior_of_the_counts_passed():
    feats, logits = torch.randn(A, D), torch.randn(A, C)
    labels = torch.randint(0, C, (A,))
    for counts in ([3] * C, list(range(1, C + 1)), torch.arange(1, C + 1) * 2, torch.arange(1, C + 1) * 2):
        got = gk.fused_paco_loss(feats, labels, center_logits=logits, class_counts=counts, backend="torch")
        prior = torch.as_tensor(counts, dtype=torch.float64)
        bias = torch.log(prior / prior.sum() + 1e-9).float()
        want = gk.fused_paco_loss(feats, labels, center_logits=logits + bias, backend="torch")
        torch.testing.assert_close(got, want)


def test_under_capture_the_prior_of_a_counts_tensor_is_computed_in_the_graph(monkeypatch):
    """A cached prior baked into a CUDA graph goes stale when the counts change in place, and is read after it is
    freed when the cache evicts it. Under capture (faked here: functional._capturing) a counts tensor on the device
    is never served from the cache: its prior is computed again, by ops the graph records."""
    from gpaco_kernels import functional

    counts = torch.arange(1.0, C + 1)
    cached = functional.prior_bias(counts, C, counts.device, torch.float32)  # the eager warm-up step
    monkeypatch.setattr(functional, "_capturing", lambda device: True)
    captured = functional.prior_bias(counts, C, counts.device, torch.float32)
    assert captured is not cached and torch.equal(captured, cached)
    assert all(bias is not captured for _, bias in functional._PRIORS.values())  # not cached either


def test_under_capture_a_prior_from_a_list_is_kept_for_good_and_a_new_one_is_refused(monkeypatch):
    from gpaco_kernels import functional

    counts = [5] * (C - 1) + [7]
    cached = functional.prior_bias(counts, C, torch.device("cpu"), torch.float32)
    monkeypatch.setattr(functional, "_capturing", lambda device: True)
    assert functional.prior_bias(counts, C, torch.device("cpu"), torch.float32) is cached
    monkeypatch.setattr(functional, "_capturing", lambda device: False)
    for n in range(functional.PRIOR_CACHE_SIZE + 4):  # evicts it from the cache
        functional.prior_bias([n + 1] * C, C, torch.device("cpu"), torch.float32)
    assert all(bias is not cached for _, bias in functional._PRIORS.values())
    assert any(bias is cached for _, bias in functional._CAPTURED_PRIORS.values())  # still alive for the graph
    monkeypatch.setattr(functional, "_capturing", lambda device: True)
    with pytest.raises(ValueError, match="class_counts given as a list or a CPU tensor cannot be copied to the GPU"):
        functional.prior_bias([1000] * C, C, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_a_label_out_of_range_is_an_error_naming_the_argument(backend):
    need_backend(backend)
    loss_fn, _, inputs = STEPS["gpaco-logits-prior"]("cpu", backend)
    inputs["labels"][3] = C  # one past the last class
    if backend == "triton":  # checked in the kernels, asserted on the device (no sync; on CPU it raises at once)
        with pytest.raises(RuntimeError, match=rf"labels or queue_labels must be in \[0, {C}\)"):
            loss_fn()
        gk.sync_checks(True)  # the opt-in host check: a ValueError with the value
        try:
            with pytest.raises(ValueError, match=rf"labels must be in \[0, {C}\).*found {C}"):
                loss_fn()
        finally:
            gk.sync_checks(False)
    else:  # CPU tensors: the host check costs nothing and names the value
        with pytest.raises(ValueError, match=rf"labels must be in \[0, {C}\).*found {C}"):
            loss_fn()


@pytest.mark.parametrize("label_sums", [False, True])
def test_a_queue_label_out_of_range_is_caught_by_the_triton_kernels(label_sums, monkeypatch):
    need_backend("triton")
    from gpaco_kernels.triton import launch

    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", label_sums)  # the tiles check the labels, or the sums kernel
    feats, logits = torch.randn(A, D), torch.randn(A, C)
    labels, queue, queue_labels = torch.randint(0, C, (A,)), torch.randn(K, D), torch.randint(0, C, (K,))
    queue_labels[K - 1] = -3
    with pytest.raises(RuntimeError, match="labels or queue_labels must be in"):
        gk.fused_paco_loss(
            feats, labels, queue=queue, queue_labels=queue_labels, center_logits=logits, backend="triton"
        )


_BAD_LABEL_ON_CUDA = """
import torch, gpaco_kernels as gk
feats, logits = torch.randn(8, 16, device="cuda"), torch.randn(8, 16, device="cuda")
labels = torch.randint(0, 16, (8,), device="cuda")
labels[3] = 16
try:
    gk.fused_paco_loss(feats, labels, center_logits=logits, backend="triton")
    torch.cuda.synchronize()
except Exception as exc:
    print(type(exc).__name__, exc)
"""


@GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason=f"{NEEDS_CUDA}: a device-side assert")
@pytest.mark.parametrize("sync_checks", ["0", "1"])
def test_a_bad_label_on_cuda_is_a_device_side_assert_or_with_sync_checks_a_named_error(sync_checks):
    """What the README says a user sees. Without GPACO_SYNC_CHECKS the kernels' check is a device-side assert
    (torch._assert_async drops its message on CUDA, and the process's CUDA context is unusable afterwards: hence a
    process of its own); with it, the host check's ValueError naming the argument and the value, before any kernel."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "GPACO_SYNC_CHECKS": sync_checks, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", _BAD_LABEL_ON_CUDA], capture_output=True, text=True, env=env)
    said = done.stdout + done.stderr
    if sync_checks == "1":
        assert "ValueError labels must be in [0, 16)" in said and "found 16" in said, said[-2000:]
    else:
        assert "device-side assert" in said, said[-2000:]


def test_sync_checks_is_a_validated_switch():
    before = gk.sync_checks()
    try:
        assert gk.sync_checks(not before) is (not before) and gk.sync_checks() is (not before)
    finally:
        gk.sync_checks(before)
    with pytest.raises(TypeError, match="enabled"):
        gk.sync_checks("yes")


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=f"{NEEDS_CUDA}: CUDA graphs")


@GPU
@needs_cuda
@pytest.mark.parametrize("step", ["gpaco-logits-prior", "pixel"])
def test_triton_step_captures_in_a_cuda_graph_and_replays_equal_to_eager(step):
    need_backend("triton", "cuda")
    loss_fn, leaves, _ = STEPS[step]("cuda", "triton")

    def run():
        loss = loss_fn()
        return (loss.detach(), *torch.autograd.grad(loss, leaves))

    want = run()  # eager; also the warm-up (autotune, the cached prior) that capture must not do
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = run()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    for got, ref in zip(static, want):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


@GPU
@needs_cuda
def test_triton_step_under_torch_compile_reduce_overhead_on_cuda_equals_eager():
    need_backend("triton", "cuda")
    torch._dynamo.reset()
    loss_fn, leaves, _ = STEPS["gpaco-logits-prior"]("cuda", "triton")
    want = loss_fn()
    want_grads = torch.autograd.grad(want, leaves)
    compiled = torch.compile(loss_fn, mode="reduce-overhead")
    for _ in range(3):
        got = compiled()
        got_grads = torch.autograd.grad(got, leaves)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@GPU
@needs_cuda
@pytest.mark.parametrize("backward", ["two-kernel", "one-pass"])
def test_a_large_gpaco_step_with_the_queue_captures_and_replays_equal_to_eager(backward, monkeypatch):
    """A large step in a CUDA graph: 4096 anchors against themselves and a 4096-row queue (2^25 pairs: positives by
    label sums; tiles by descriptors on Hopper as GPACO_TRITON_TMA says), the queue's get() and enqueue() inside,
    class counts changed in place between replays; three replays against three eager steps from the same state."""
    need_backend("triton", "cuda")
    from gpaco_kernels.triton import launch

    monkeypatch.setattr(launch, "BACKWARD", backward)
    gen = torch.Generator(device="cuda").manual_seed(0)
    n, K, C, D = 4096, 4096, 100, 128
    queue = gk.MomentumQueue(K, D, device="cuda", dtype=torch.bfloat16, init="random", num_classes=C)
    counts = torch.randint(1, 500, (C,), device="cuda", generator=gen).float()
    feats = torch.randn(n, D, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    logits = torch.randn(n, C, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    labels = torch.randint(0, C, (n,), device="cuda", generator=gen)

    def step():
        q, ql = queue.get()
        loss = gk.fused_paco_loss(
            feats, labels, queue=q, queue_labels=ql, center_logits=logits, class_counts=counts, alpha=0.05,
            label_smoothing=0.1, normalize=True, backend="triton",
        )  # fmt: skip
        grads = torch.autograd.grad(loss, [feats, logits])
        queue.enqueue(feats.detach()[:1000], labels[:1000])
        return (loss.detach(), *grads)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # autotune and every first-call cost, outside the capture
    torch.cuda.current_stream().wait_stream(side)
    start = {k: v.clone() for k, v in queue.state_dict().items()}
    start_counts = counts.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    replayed = []
    for i in range(3):
        graph.replay()
        replayed.append([t.clone() for t in static])
        counts[i] += 1000.0  # in place: the next replay must see it
    queue.load_state_dict(start)
    counts.copy_(start_counts)
    eager = []
    for i in range(3):
        eager.append(step())
        counts[i] += 1000.0
    torch.cuda.synchronize()
    exact = backward == "two-kernel"  # the one pass adds by atomics: its last bits vary from run to run
    for i, (got, want) in enumerate(zip(replayed, eager)):
        for name, g, w in zip(("loss", "dfeatures", "dlogits"), got, want):
            tol = 0 if exact else 1e-2 * w.abs().max().item()
            torch.testing.assert_close(g, w, rtol=0, atol=tol, msg=lambda m, i=i, name=name: f"step {i} {name}: {m}")
