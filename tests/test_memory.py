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


@pytest.mark.parametrize(
    "text,oom",
    [
        ("RuntimeError: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
         "you tried to allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)", True),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", True),
        ("terminate called after throwing an instance of 'std::bad_alloc'", True),
        ("MemoryError: ", True),
        ("RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x3 and 5x2)", False),
        ("ValueError: labels must be integers", False),
    ],
)  # fmt: skip
def test_one_list_tells_out_of_memory_from_other_errors(text, oom):
    """The benchmarks, the max-batch search and train_seg's budget check read failures with this one function."""
    from gpaco_kernels._measure import is_out_of_memory

    assert is_out_of_memory(text) is oom
