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
