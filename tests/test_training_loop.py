"""The library in a training loop as users write it (issue 30): a compiled GPaCo step with a filling MomentumQueue
(how often it compiles, and equal to eager), torch.compile(dynamic=True), autocast and mixed float dtypes, and the
state of every module through .half(), .to() and state_dict round trips."""

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


def _loop(backend, device="cpu", compile_options=None, *, steps=STEPS, enqueue_in_step=True):
    """STEPS GPaCo steps from one seed: get() and (by default) enqueue() inside the step, the backward outside it.
    Returns the per-step (loss, grad of the batch, grad of the head's weight) and the compile counter (or None)."""
    torch.manual_seed(0)
    queue = gk.MomentumQueue(K, D, device=device)
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
        counter = CompileCounterWithBackend("aot_eager")
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
    assert len(queue) == K
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
