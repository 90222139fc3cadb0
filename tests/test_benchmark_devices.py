"""The benchmarks build every tensor on the benchmark's device: each provider's setup, and the dense and both floor
providers' whole step, run on 'meta' tensors, where a tensor created on the CPU by mistake (torch.arange without a
device, as the published code writes it for .cuda() inputs) fails with a device mismatch. This is the CPU-only
stand-in for `python -m benchmarks --device cuda`."""

from __future__ import annotations

import pytest
import torch

from benchmarks.cases import SWEEPS, make_case
from benchmarks.providers import BACKENDS, FLOORS, PROVIDERS, _floor_operands, phases


@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_cases_live_on_the_requested_device(sweep):
    case = make_case(sweep, SWEEPS[sweep].quick[0], device="meta")
    tensors = [v for v in case.inputs.values() if torch.is_tensor(v)]
    assert tensors and all(t.device.type == "meta" for t in tensors), sweep
    assert all(leaf.device.type == "meta" and leaf.requires_grad for leaf in case.leaves)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_every_provider_sets_up_and_the_dense_ones_run_on_another_device(sweep, provider):
    case = make_case(sweep, SWEEPS[sweep].quick[0], device="meta")
    steps = phases(provider, case)
    assert set(steps) == {"fwd", "bwd", "fwd+bwd"}
    if provider in FLOORS:
        assert all(t.device.type == "meta" for t in _floor_operands(case))
        steps["fwd+bwd"]()
    elif provider == "dense":
        loss = steps["fwd"]()
        assert loss.device.type == "meta" and loss.dim() == 0
        steps["fwd+bwd"]()
        assert all(leaf.grad is not None and leaf.grad.device.type == "meta" for leaf in case.leaves)
    else:
        # torch.compile of the dense step and the fused backends read values (label checks, compilation guards),
        # which meta tensors do not have; their inputs are the case's, checked above to be on the device.
        assert provider == "compiled" or provider in BACKENDS
