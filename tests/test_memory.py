"""The torch backend's peak memory, measured in a fresh process, at a size where the dense form needs > 1 GB."""

from __future__ import annotations

import pytest

from tools.peak_memory import measure_in_subprocess
from tools.workloads import WORKLOADS


@pytest.mark.slow
def test_torch_backend_pixel_loss_peak_memory_under_100_mb():
    n = WORKLOADS["pixel"]["batch"]
    columns = WORKLOADS["pixel"]["classes"] + n
    dense_bytes = n * columns * 4  # one float32 copy of the anchors x columns logits; the dense loss keeps several
    assert dense_bytes > 1e9
    result = measure_in_subprocess("pixel", "torch")
    assert result["batch"] == n
    assert 0 < result["peak_growth_mb"] < 100, result
