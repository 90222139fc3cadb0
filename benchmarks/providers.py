"""The providers a benchmark compares, each turning a Case into callables for its forward, backward and both.

tight-floor     the products no exact method avoids: S = A X^T and G X over every column X that comes from a product
                with the anchors (batch rows and queue), G^T A only over the columns that take a gradient (the batch
                rows; the queue takes none); in the dtype and with the routine the fused CPU backend uses
                (benchmarks/machine.py product_fn)
three-products  the older, looser baseline: the same three products with G^T A over every column, queue included
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

PROVIDERS = ("tight-floor", "three-products", "dense", "compiled", "torch", "cpu", "triton")
FLOORS = ("tight-floor", "three-products")
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
    """(anchors, product columns) in the dtype the floor multiplies them in (converted here, outside the timing)."""
    from .machine import product_fn

    feats = case.inputs["features"].detach()
    if case.kind == "supcon":
        cols = torch.cat(torch.unbind(feats, dim=1))
        anchors = cols
    else:
        anchors = feats[: case.anchors]
        cols = torch.cat([feats, case.inputs["queue"]]) if "queue" in case.inputs else feats
    _, _, operand_dtype = product_fn(feats.dtype, feats.device)
    return anchors.to(operand_dtype).contiguous(), cols.to(operand_dtype).contiguous()


def _floor(case: Case, tight: bool):
    """(forward, backward(g)) of a floor: S = A X^T; G X and G^T A (over the gradient columns when tight)."""
    from .machine import product_fn

    anchors, cols = _floor_operands(case)
    _, mm, _ = product_fn(case.inputs["features"].dtype, anchors.device)
    n_grad = case.grad_columns if tight else cols.shape[0]

    def forward():
        return mm(anchors, False, cols, True)

    def backward(g):
        g = g.to(anchors.dtype)
        mm(g, False, cols, False)
        mm(g[:, :n_grad], True, anchors, False)

    return forward, backward


def forward_fn(name: str, case: Case):
    """A callable running the provider's forward and returning its loss (a floor: the logits)."""
    if name in FLOORS:
        return _floor(case, name == "tight-floor")[0]
    if name == "dense":
        return lambda: _dense(case)
    if name == "compiled":
        return lambda: _compiled_dense(case)
    return lambda: _fused(case, name)


def phases(name: str, case: Case) -> dict:
    """{"fwd": fn, "bwd": (setup, fn), "fwd+bwd": fn}. bwd's setup runs a forward (untimed) and returns the
    arguments of fn, which runs the backward alone."""
    forward = forward_fn(name, case)
    if name in FLOORS:
        forward, backward = _floor(case, name == "tight-floor")

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
