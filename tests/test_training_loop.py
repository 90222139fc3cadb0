"""The library in a training loop as users write it (issue 30): a compiled GPaCo step with a filling MomentumQueue
(how often it compiles, and equal to eager), torch.compile(dynamic=True), autocast and mixed float dtypes, and the
state of every module through .half(), .to() and state_dict round trips."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

import gpaco_kernels as gk

from helpers import GPU, need_backend

# Where each backend runs compiled: the Triton interpreter cannot run under torch.compile (tests/test_compile_trace.py
# traces the Triton host path on CPU instead), so Triton's loop runs on a GPU.
LOOP_BACKENDS = [("reference", "cpu"), ("torch", "cpu"), ("cpu", "cpu"), pytest.param("triton", "cuda", marks=GPU)]
B, D, C, K, STEPS = 16, 32, 10, 80, 12  # 16 rows a step fill the 80-slot queue at step 5, then wrap


def _loop(backend, device="cpu", compile_options=None, *, steps=STEPS, enqueue_in_step=True, compiler="aot_eager",
          queue_size=K):  # fmt: skip
    """STEPS GPaCo steps from one seed: get() and (by default) enqueue() inside the step, the backward outside it.
    Returns the per-step (loss, grad of the batch, grad of the head's weight) and the compile counter (or None)."""
    torch.manual_seed(0)
    queue = gk.MomentumQueue(queue_size, D, device=device)
    head = torch.nn.Linear(D, C).to(device)
    batches = [(torch.randn(B, D, device=device), torch.randint(0, C, (B,), device=device)) for _ in range(steps)]

    def step(x, y):
        f = F.normalize(x, dim=1)
        qf, ql = queue.get()
        loss = gk.fused_paco_loss(
            f, y, queue=qf, queue_labels=ql, center_logits=head(x), class_counts=[5.0] * C, alpha=0.05,
            temperature=0.2, label_smoothing=0.1, backend=backend,
        )  # fmt: skip
        if enqueue_in_step:
            queue.enqueue(f.detach(), y)
        return loss

    counter = None
    if compile_options is not None:
        torch._dynamo.reset()  # the compiled code of earlier loops (the same code object) would count here
        counter = CompileCounterWithBackend(compiler)
        step = torch.compile(step, backend=counter, **compile_options)
    out = []
    for x, y in batches:
        x = x.clone().requires_grad_()
        loss = step(x, y)
        loss.backward()
        out.append((loss.detach(), x.grad, head.weight.grad.clone()))
        head.weight.grad = None
        if not enqueue_in_step:
            queue.enqueue(F.normalize(x.detach(), dim=1), y)
    assert len(queue) == queue_size
    return out, counter


def _assert_equal_runs(got, want):
    for i, (g, w) in enumerate(zip(got, want)):
        for name, a, b in zip(("loss", "grad features", "grad head"), g, w):
            torch.testing.assert_close(
                a, b, rtol=1e-5, atol=1e-6, msg=lambda m, i=i, name=name: f"step {i} {name}: {m}"
            )


@pytest.mark.parametrize("backend, device", LOOP_BACKENDS)
@pytest.mark.parametrize(
    "options", [{"fullgraph": True}, {"fullgraph": True, "dynamic": True}], ids=["default", "dynamic"]
)
def test_a_compiled_step_with_a_filling_queue_compiles_at_most_three_times_and_equals_eager(backend, device, options):
    """While the queue fills, get() returns a longer queue each step: the first change gives the queue a dynamic
    length (no size or float of the step is formatted into a message or read as a Python number), so the step
    compiles at most three times in twelve steps, through the wrap, and every step equals eager."""
    need_backend(backend, device)
    eager, _ = _loop(backend, device)
    compiled, counter = _loop(backend, device, options)
    assert counter.frame_count <= 3, counter.frame_count
    _assert_equal_runs(compiled, eager)


def test_inductor_does_not_read_the_queue_the_step_overwrote():
    """With Inductor the partitioner may recompute a cheap op of the forward in the backward: had get()'s copy been a
    clone(), the backward of the torch backend (which reads its queue again) recomputed it from the buffer that the
    step's enqueue had overwritten once the queue wrapped, and the feature gradients were off by 4e-3."""
    eager, _ = _loop("torch")
    compiled, counter = _loop("torch", "cpu", {"fullgraph": True}, compiler="inductor")
    assert counter.frame_count <= 3, counter.frame_count
    _assert_equal_runs(compiled, eager)


def test_a_compiled_step_that_enqueues_after_the_backward_equals_eager():
    eager, _ = _loop("auto", enqueue_in_step=False)
    compiled, counter = _loop("auto", "cpu", {"fullgraph": True}, enqueue_in_step=False)
    assert counter.frame_count <= 3, counter.frame_count
    _assert_equal_runs(compiled, eager)


# -- mixed precision -----------------------------------------------------------------------------------------------
# Every backend on the devices it runs on here: Triton's on CUDA (its interpreter runs the float32 path these mixed
# inputs promote to, but autocast is about the GPU), the others on the CPU, and torch's on CUDA too.
AUTOCAST_CASES = [
    ("reference", "cpu", torch.bfloat16),
    ("torch", "cpu", torch.bfloat16),
    ("cpu", "cpu", torch.bfloat16),
    ("triton", "cpu", torch.bfloat16),
    pytest.param("torch", "cuda", torch.float16, marks=GPU),
    pytest.param("triton", "cuda", torch.float16, marks=GPU),
    pytest.param("triton", "cuda", torch.bfloat16, marks=GPU),
]


def _gpaco_inputs(device, n=24, k=40, c=7, d=20):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=gen).to(device)
    queue = F.normalize(torch.randn(k, d, generator=gen), dim=1).to(device)
    labels = torch.randint(0, c, (n + k,), generator=gen).to(device)
    head = torch.nn.Linear(d, c).to(device)
    return x, queue, labels, head


@pytest.mark.parametrize("backend, device, half", AUTOCAST_CASES)
def test_the_gpaco_drop_in_under_autocast_takes_half_logits_and_float32_features(backend, device, half):
    """GPaCo's --fp16 loop: under autocast the class logits come out of a Linear in half precision while the features
    (concatenated with a float32 queue) are float32. The loss computes in float32 (the promotion), within 3e-2 of
    float64 on the same values, and each gradient comes back in its input's dtype."""
    need_backend(backend, device)
    x, queue, labels, head = _gpaco_inputs(device)
    crit = gk.compat.GPaCoLoss(alpha=0.05, temperature=0.2, K=queue.shape[0], num_classes=7, smooth=0.1,
                               backend=backend)  # fmt: skip
    crit.cal_weight_for_classes(list(range(10, 17)))
    x.requires_grad_()
    with torch.autocast(device, dtype=half):
        logits = head(x)
        feats = torch.cat([F.normalize(x, dim=1), queue])  # float32: cat promotes under autocast
        loss = crit(feats, labels, logits)
    assert logits.dtype == half and feats.dtype == torch.float32 and loss.dtype == torch.float32
    logits.retain_grad()
    loss.backward()
    assert logits.grad.dtype == half and x.grad.dtype == torch.float32
    truth = gk.compat.GPaCoLoss(alpha=0.05, temperature=0.2, K=queue.shape[0], num_classes=7, smooth=0.1,
                                backend="reference")  # fmt: skip
    truth.cal_weight_for_classes(list(range(10, 17)))
    want = truth(feats.detach().double(), labels, logits.detach().double())
    assert torch.isfinite(loss) and abs(loss.item() - want.item()) <= 3e-2, (loss.item(), want.item())
    # float32 math on half-precision values: far closer than 3e-2
    assert abs(loss.item() - want.item()) <= 1e-4 * abs(want.item()), (loss.item(), want.item())


@pytest.mark.parametrize("backend, device, half", AUTOCAST_CASES)
def test_fused_paco_loss_with_mixed_float_inputs_computes_in_their_promotion(backend, device, half):
    """Without autocast: half features, a float32 queue and float32 centers promote to float32; the loss equals the
    same call on float32 copies, gradients included, each gradient in its input's dtype."""
    need_backend(backend, device)
    x, queue, labels, head = _gpaco_inputs(device)
    feats = F.normalize(x, dim=1).to(half).requires_grad_()
    centers = head.weight.detach().clone().requires_grad_()
    kwargs = dict(queue=queue, queue_labels=labels[24:], alpha=0.05, temperature=0.2, backend=backend)
    loss = gk.fused_paco_loss(feats, labels[:24], centers=centers, **kwargs)
    grads = torch.autograd.grad(3.0 * loss, [feats, centers])
    assert loss.dtype == torch.float32 and grads[0].dtype == half and grads[1].dtype == torch.float32
    f32 = feats.detach().float().requires_grad_()
    want = gk.fused_paco_loss(f32, labels[:24], centers=centers, **kwargs)
    want_grads = torch.autograd.grad(3.0 * want, [f32, centers])
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0], want_grads[0].to(half))
    torch.testing.assert_close(grads[1], want_grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend, device, half", AUTOCAST_CASES)
def test_autocast_does_not_lower_the_precision_of_float32_inputs(backend, device, half):
    """Float32 inputs under autocast give the float32 loss, not one whose products autocast ran in half precision."""
    need_backend(backend, device)
    x, queue, labels, head = _gpaco_inputs(device)
    feats = F.normalize(x, dim=1)
    kwargs = dict(queue=queue, queue_labels=labels[24:], centers=head.weight.detach(), alpha=0.05, backend=backend)
    want = gk.fused_paco_loss(feats, labels[:24], temperature=0.05, **kwargs)
    with torch.autocast(device, dtype=half):
        got = gk.fused_paco_loss(feats, labels[:24], temperature=0.05, **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_supcon_and_psc_under_autocast(half):
    """The SupCon and PSC modules under CPU autocast: half features from a Linear against float32 prototypes."""
    torch.manual_seed(0)
    head = torch.nn.Linear(12, 16)
    x = torch.randn(8, 2, 12)
    labels = torch.randint(0, 3, (8,))
    psc = gk.PSCLoss(3, 16)
    with torch.autocast("cpu", dtype=half):
        z = head(x)
        supcon = gk.SupConLoss()(F.normalize(z, dim=-1), labels)
        proto = psc(z[:, 0], labels)
    assert z.dtype == half and supcon.dtype == half and proto.dtype == torch.float32
    want = gk.fused_psc_loss(z[:, 0].detach().double(), labels, psc.prototypes.detach().double())
    assert abs(proto.item() - want.item()) <= 1e-4 * abs(want.item())
    proto.backward()
    assert psc.prototypes.grad.dtype == torch.float32


# -- module state ---------------------------------------------------------------------------------------------------
COUNTS = [70_000.0, 500.0, 20.0, 3.0]  # 70,000 is inf in float16


def _paco_modules():
    """Every module that holds class counts, built without them, with a call on (features, labels, sup_logits)."""
    c = len(COUNTS)
    return {
        "FusedPaCoLoss": (lambda: gk.FusedPaCoLoss(alpha=0.05), lambda m, f, y, s: m(f[:12], y[:12], center_logits=s)),
        "PaCoLoss": (lambda: gk.compat.PaCoLoss(alpha=0.05, K=4, num_classes=c), lambda m, f, y, s: m(f, y, s[:4])),
        "GPaCoLoss": (lambda: gk.compat.GPaCoLoss(alpha=0.05, K=4, num_classes=c), lambda m, f, y, s: m(f, y, s[:8])),
        "GPaCoViTLoss": (lambda: gk.compat.GPaCoViTLoss(K=4, num_classes=c), lambda m, f, y, s: m(f, y, s[:8])),
    }


def _set_counts(module, counts):
    if isinstance(module, gk.FusedPaCoLoss):
        module.set_class_counts(counts)
    else:
        module.cal_weight_for_classes(counts)


def _paco_inputs():
    gen = torch.Generator().manual_seed(3)
    feats = F.normalize(torch.randn(12, 6, generator=gen), dim=1)
    labels = torch.randint(0, len(COUNTS), (12,), generator=gen)
    return feats, labels, torch.randn(12, len(COUNTS), generator=gen)


@pytest.mark.parametrize("name", list(_paco_modules()))
def test_class_counts_survive_half_and_to(name):
    """.half() and .to(dtype) cast floating buffers: the counts move with the module but stay float64 (in float16 a
    count of 70,000 is inf, and the next call raised 'class_counts must be finite')."""
    build, call = _paco_modules()[name]
    module = build()
    _set_counts(module, COUNTS)
    feats, labels, logits = _paco_inputs()
    want = call(module, feats, labels, logits)
    for convert in (lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.to("cpu", torch.float64)):
        converted = convert(copy.deepcopy(module))
        assert converted.class_counts.dtype == torch.float64
        assert converted.class_counts.tolist() == COUNTS
        torch.testing.assert_close(call(converted, feats, labels, logits), want)


@pytest.mark.parametrize("name", list(_paco_modules()))
def test_class_counts_load_into_a_module_built_either_way(name):
    build, call = _paco_modules()[name]
    saved = build()
    _set_counts(saved, COUNTS)
    state = saved.state_dict()
    feats, labels, logits = _paco_inputs()
    want = call(saved, feats, labels, logits)
    without, with_other = build(), build()
    _set_counts(with_other, [1.0] * len(COUNTS))
    for module in (without, with_other):
        module.load_state_dict(state)  # strict: no unexpected key
        assert module.class_counts.dtype == torch.float64 and module.class_counts.tolist() == COUNTS
        torch.testing.assert_close(call(module, feats, labels, logits), want)
    bad = dict(state, class_counts=torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="^class_counts must be finite and >= 0"):
        build().load_state_dict(bad)
    # a checkpoint without counts, into a module that has them: reported missing (strict), as for any buffer
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "class_counts"'):
        with_other.load_state_dict(build().state_dict())
    with_other.load_state_dict(build().state_dict(), strict=False)
    assert with_other.class_counts.tolist() == COUNTS  # kept


def test_counts_of_the_wrong_length_are_refused_when_the_checkpoint_loads():
    """A compat module knows its number of classes: counts of another length are refused as the checkpoint loads,
    as cal_weight_for_classes refuses them, not at the next forward."""
    saved = gk.compat.GPaCoLoss(alpha=0.05, num_classes=5)
    saved.cal_weight_for_classes([1.0] * 5)
    with pytest.raises(ValueError, match=r"^class_counts must have shape \(4,\) \(one count per class\), got \(5,\)"):
        gk.compat.GPaCoLoss(alpha=0.05, num_classes=4).load_state_dict(saved.state_dict())


def test_psc_prototypes_survive_half_and_a_state_dict():
    """After .half() the prototypes are float16 and float32 features still train against them (the loss computes in
    the promotion); a state_dict loads into a fresh module."""
    torch.manual_seed(0)
    psc = gk.PSCLoss(5, 8)
    feats, labels = torch.randn(10, 8), torch.randint(0, 5, (10,))
    want = psc(feats, labels)
    fresh = gk.PSCLoss(5, 8)
    fresh.load_state_dict(psc.state_dict())
    torch.testing.assert_close(fresh(feats, labels), want)
    half = copy.deepcopy(psc).half()
    assert half.prototypes.dtype == torch.float16
    loss = half(feats, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and half.prototypes.grad.dtype == torch.float16
    torch.testing.assert_close(loss, want, rtol=1e-3, atol=1e-3)


def test_a_half_queue_feeds_a_float32_loss():
    """MomentumQueue.half() holds float16 rows (as a .half() model's buffers); the float32 batch and the float16
    queue compute in float32. A state_dict round trip keeps the rows, the labels and the count."""
    queue = gk.MomentumQueue(10, 4)
    queue.enqueue(F.normalize(torch.randn(6, 4), dim=1), torch.randint(0, 3, (6,)))
    half = copy.deepcopy(queue).half()
    assert half.get()[0].dtype == torch.float16 and len(half) == 6
    feats = F.normalize(torch.randn(5, 4), dim=1)
    labels = torch.randint(0, 3, (5,))
    loss = gk.fused_paco_loss(feats, labels, queue=half.get()[0], queue_labels=half.get()[1])
    want = gk.fused_paco_loss(feats, labels, queue=half.get()[0].float(), queue_labels=half.get()[1])
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want)
    restored = gk.MomentumQueue(10, 4)
    restored.load_state_dict(queue.state_dict())
    assert len(restored) == 6
    for a, b in zip(restored.get(), queue.get()):
        assert torch.equal(a, b)


def test_every_module_shows_its_hyperparameters():
    from gpaco_kernels.compat import pml

    shown = {
        gk.FusedPaCoLoss(alpha=0.25): ["alpha=0.25"],
        gk.SupConLoss(temperature=0.3): ["temperature=0.3"],
        gk.PSCLoss(3, 4, temperature=0.4): ["num_classes=3", "temperature=0.4"],
        gk.MomentumQueue(7, 3): ["size=7", "dim=3"],
        gk.compat.PaCoLoss(alpha=0.25, K=5, num_classes=3): ["alpha=0.25", "K=5", "num_classes=3", "prior=none"],
        gk.compat.GPaCoLoss(alpha=0.25, smooth=0.2, num_classes=3): ["alpha=0.25", "smooth=0.2", "K=8192"],
        gk.compat.GPaCoViTLoss(num_classes=3): ["alpha=0.05", "temperature=0.2", "smooth=0.1"],
        gk.compat.PaCoSegLoss(alpha=0.25, num_classes=3): ["alpha=0.25", "num_classes=3"],
        gk.compat.SupConLoss(temperature=0.3, contrast_mode="one"): ["temperature=0.3", "contrast_mode='one'"],
        pml.SupConLoss(temperature=0.3): ["temperature=0.3"],
    }
    for module, words in shown.items():
        text = repr(module)
        for word in words:
            assert word in text, (word, text)
    prior = gk.compat.GPaCoLoss(alpha=0.25, num_classes=3)
    prior.cal_weight_for_classes([1, 2, 3])
    assert "prior=3 class counts" in repr(prior)


def test_a_sup_logits_shape_that_fits_the_sibling_module_names_it():
    """PaCoLoss takes [q; k; queue] (anchors: q), GPaCoLoss [batch; queue] (anchors: every batch row): in the other's
    loop the sup_logits rows give the layout away, and the error names the module that fits."""
    feats, labels, logits = _paco_inputs()  # 12 rows: 8 batch rows and a queue of 4
    paco = gk.compat.PaCoLoss(alpha=0.05, K=4, num_classes=len(COUNTS))
    paco.cal_weight_for_classes(COUNTS)
    with pytest.raises(
        ValueError, match=r"^sup_logits must have shape \(anchors, num_classes\) = \(4, 4\).*use GPaCoLoss"
    ):
        paco(feats, labels, logits[:8])  # one row per batch row: GPaCo's layout
    gpaco = gk.compat.GPaCoLoss(alpha=0.05, K=4, num_classes=len(COUNTS))
    with pytest.raises(
        ValueError, match=r"^sup_logits must have shape \(anchors, num_classes\) = \(8, 4\).*use PaCoLoss"
    ):
        gpaco(feats, labels, logits[:4])  # one row per q row: PaCo's layout
    with pytest.raises(ValueError, match=r"^sup_logits must have shape \(num_anchors, C\) = \(8, C\), got \(5, 4\)$"):
        gpaco(feats, labels, logits[:5])  # fits neither: the general message
