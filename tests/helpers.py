"""Shared test helpers: a comparison that explains its failures, tolerances per dtype, and small tiles."""

from __future__ import annotations

import torch

# (dtype, atol, rtol) against a float64 ground truth, on values and gradients of O(1) size.
DTYPE_TOLERANCES = [
    (torch.float64, 1e-10, 1e-10),
    (torch.float32, 2e-5, 2e-5),
    (torch.bfloat16, 2e-2, 2e-2),
]


def assert_close(actual, expected, *, atol, rtol, name="tensor"):
    """torch.testing-style check that reports how many elements mismatch, NaN/inf disagreements and the worst few
    indices, instead of a bare assert."""
    actual = torch.as_tensor(actual).detach().to(torch.float64).cpu()
    expected = torch.as_tensor(expected).detach().to(torch.float64).cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    nan_mismatch = torch.isnan(actual) != torch.isnan(expected)
    inf_mismatch = torch.isinf(actual) != torch.isinf(expected)
    diff = (actual - expected).abs()
    bad = (diff > atol + rtol * expected.abs()) | nan_mismatch | inf_mismatch
    bad &= ~(torch.isnan(actual) & torch.isnan(expected))
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        worst = [(tuple(i), actual[tuple(i)].item(), expected[tuple(i)].item()) for i in idx]
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} elements differ beyond atol={atol}, rtol={rtol}; "
            f"max abs diff {diff[~torch.isnan(diff)].max().item() if (~torch.isnan(diff)).any() else 'nan'}; "
            f"NaN mismatches {int(nan_mismatch.sum())}, inf mismatches {int(inf_mismatch.sum())}; "
            f"first (index, actual, expected): {worst}"
        )


def max_abs_err(actual, expected) -> float:
    return (actual.detach().double() - expected.detach().double()).abs().max().item() if actual.numel() else 0.0
