"""Peak memory growth and time of one call, on CPU (resident memory) or CUDA (the caching allocator's peak): used by
`python -m gpaco_kernels.selfcheck` and the benchmarks."""

from __future__ import annotations

import re
import resource
import time


def _status_kb(field: str):
    try:
        with open("/proc/self/status") as fh:
            found = re.search(rf"^{field}:\s+(\d+)\s+kB", fh.read(), re.MULTILINE)
        return int(found.group(1)) if found else None
    except OSError:
        return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_growth(fn, device="cpu"):
    """(peak memory growth in MB, seconds, fn's result) of one call of fn; meaningful in a fresh process."""
    import torch

    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 1024
    elif _reset_peak():
        before = _status_kb("VmRSS")
    else:  # no resettable peak: the high-water mark so far is the best baseline there is
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = fn()
    if on_cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if on_cuda:
        peak = torch.cuda.max_memory_allocated(device) / 1024
    else:
        peak = _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round((peak - before) / 1024, 1), round(seconds, 4), result
