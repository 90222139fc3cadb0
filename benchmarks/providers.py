"""The providers a benchmark compares, each turning a Case into callables for its forward, backward and both.

floor      the bare products every exact method computes: logits = A X^T (forward), G X and G^T A (backward),
           X = the columns that come from a product with the anchors (batch rows and queue)
dense      the published formula as the official code writes it (dense_published.py), eager
compiled   torch.compile of `dense` (compilation happens in the warm-up, never timed)
torch, cpu, triton   gpaco_kernels backends through fused_paco_loss / fused_supcon_loss
"""

from __future__ import annotations

import torch

import gpaco_kernels as gk
from gpaco_kernels.ops.dispatch import backend_unavailable_reason, device_unsupported_reason

from .cases import Case
from .dense_published import dense_call, supcon_dense

PROVIDERS = ("floor", "dense", "compiled", "torch", "cpu", "triton")
BACKENDS = ("torch", "cpu", "triton")

# Live anchors x columns float32 matrices the published formula holds for its backward (same-label mask, sims,
# logits, masks, exp, log-prob and their gradients), counted from the code; its peak memory is about this many
# copies. Used to skip dense points that cannot fit instead of letting the OOM killer pick a process.
DENSE_COPIES = 10


def unavailable(name: str, device_type: str):
    """None when the provider runs on this device here, else why not."""
    if name not in PROVIDERS:
        return f"unknown provider {name!r}; choose from {list(PROVIDERS)}"
    if name in BACKENDS:
        return backend_unavailable_reason(name) or device_unsupported_reason(name, device_type)
    return None


def dense_bytes(case: Case) -> int:
    return DENSE_COPIES * case.anchors * case.columns * case.inputs["features"].element_size()


def _dense(case: Case):
    if case.kind == "supcon":
        return supcon_dense(case.inputs["features"], case.inputs["labels"], **case.options)
    return dense_call(case.inputs, case.options)


_compiled = {}


def _compiled_dense(case: Case):
    # One compiled function per process: torch.compile recompiles per shape (dynamic after the second), in warm-up.
    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(_dense)
    return _compiled["fn"](case)


def _fused(case: Case, backend: str):
    if case.kind == "supcon":
        return gk.fused_supcon_loss(**case.inputs, **case.options, backend=backend)
    return gk.fused_paco_loss(**case.inputs, **case.options, backend=backend)


def _floor_operands(case: Case):
    feats = case.inputs["features"].detach()
    if case.kind == "supcon":
        cols = torch.cat(torch.unbind(feats, dim=1))
        return cols, cols
    anchors = feats[: case.anchors]
    cols = torch.cat([feats, case.inputs["queue"]]) if "queue" in case.inputs else feats
    return anchors, cols


def forward_fn(name: str, case: Case):
    """A callable running the provider's forward and returning its loss (the floor: the logits)."""
    if name == "floor":
        anchors, cols = _floor_operands(case)
        return lambda: anchors @ cols.T
    if name == "dense":
        return lambda: _dense(case)
    if name == "compiled":
        return lambda: _compiled_dense(case)
    return lambda: _fused(case, name)


def phases(name: str, case: Case) -> dict:
    """{"fwd": fn, "bwd": (setup, fn), "fwd+bwd": fn}. bwd's setup runs a forward (untimed) and returns the
    arguments of fn, which runs the backward alone."""
    forward = forward_fn(name, case)
    if name == "floor":
        anchors, cols = _floor_operands(case)

        def backward(g):
            g @ cols
            g.T @ anchors

        def both():
            backward(forward())

        return {"fwd": forward, "bwd": (lambda: ((forward(),), {}), backward), "fwd+bwd": both}

    def both():
        case.zero_grad()
        forward().backward()

    def setup():
        case.zero_grad()
        return (forward(),), {}

    return {"fwd": lambda: forward().detach(), "bwd": (setup, lambda loss: loss.backward()), "fwd+bwd": both}
