"""Standard problem sizes, shared by the quickstart, the memory probe, the memory test and the benchmarks.

gpaco-lt   one GPaCo ImageNet-LT step: 256 anchors (q and k of a 128 batch), queue 8192, 1000 classes, D 128
pixel      the GPaCo pixel loss on every pixel of a 512x512 crop at stride 4: N 16384, 150 classes, no queue
"""

from __future__ import annotations

import torch

from gpaco_kernels.functional import fused_paco_loss

WORKLOADS = {
    "gpaco-lt": dict(anchors=256, batch=256, queue=8192, classes=1000, dim=128),
    "pixel": dict(anchors=16384, batch=16384, queue=0, classes=150, dim=128),
}

# Hyperparameters of the published GPaCo recipes (ImageNet-LT; the pixel loss ignores label == num_classes).
OPTIONS = {
    "gpaco-lt": dict(alpha=0.05, beta=1.0, gamma=1.0, temperature=0.2, center_temperature=1.0, label_smoothing=0.1),
    "pixel": dict(alpha=0.5, beta=1.0, gamma=1.0, temperature=0.07, center_temperature=1.0, ignore_index=150),
}


def make_inputs(anchors, batch, queue, classes, dim, *, seed=0, dtype=torch.float32, ignore_fraction=0.0, device="cpu"):
    """Keyword arguments of fused_paco_loss for one step: normalized embeddings, long-tailed labels, a queue,
    classifier logits and class counts, drawn on the CPU (the same numbers on every device) and moved to device.
    Leaves requiring grad: features and center_logits."""
    gen = torch.Generator().manual_seed(seed)
    # A long-tailed label draw (class c has weight 0.99^c), as in the datasets these losses are used on.
    weights = 0.99 ** torch.arange(classes, dtype=torch.float64)
    labels = torch.multinomial(weights, batch, replacement=True, generator=gen)
    if ignore_fraction:
        labels[torch.rand(batch, generator=gen) < ignore_fraction] = classes
    feats = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=1)
    inputs = dict(
        features=feats.to(dtype).requires_grad_(),
        labels=labels,
        num_anchors=anchors,
        center_logits=torch.randn(anchors, classes, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(),
    )
    if queue:
        q = torch.nn.functional.normalize(torch.randn(queue, dim, generator=gen, dtype=torch.float64), dim=1)
        inputs.update(queue=q.to(dtype), queue_labels=torch.multinomial(weights, queue, True, generator=gen))
    if not ignore_fraction:
        inputs["class_counts"] = torch.bincount(labels, minlength=classes) + 1
    return {
        k: v.detach().to(device).requires_grad_(v.requires_grad) if torch.is_tensor(v) else v for k, v in inputs.items()
    }


def workload_inputs(name, *, batch=None, dtype=torch.float32, seed=0, device="cpu"):
    """Inputs and loss options of a named workload; batch overrides N (and the anchors of the pixel loss)."""
    sizes = dict(WORKLOADS[name])
    if batch is not None:
        sizes["batch"] = batch
        if name == "pixel":
            sizes["anchors"] = batch
    ignore = 0.1 if name == "pixel" else 0.0
    inputs = make_inputs(**sizes, seed=seed, dtype=dtype, ignore_fraction=ignore, device=device)
    return inputs, dict(OPTIONS[name])


def step(inputs, options, backend):
    """One forward and backward; returns the loss value. Gradients accumulate into the leaves."""
    loss = fused_paco_loss(**inputs, **options, backend=backend)
    loss.backward()
    return loss.item()
