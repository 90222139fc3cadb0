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


# What an out-of-memory failure says, in any of the places it can come from: torch's CPU allocator, C++
# (std::bad_alloc), the CUDA caching allocator, Python. Compared case-insensitively.
OOM_PATTERNS = ("out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc", "MemoryError")


def is_out_of_memory(text: str) -> bool:
    """Whether an error's text (or a child process's stderr) reports running out of memory."""
    text = text.lower()
    return any(p.lower() in text for p in OOM_PATTERNS)


def set_memory_limit(device, budget: int) -> str:
    """Let this process allocate at most `budget` more bytes from now on; returns how the limit is enforced.

    CUDA: the caching allocator's limit (a fraction of the device's memory) at what is allocated now + budget. CPU:
    RLIMIT_AS at the address space now + budget; address space is at least the memory touched, so the limit is
    strict (a step that fits under it fits in that much memory), and an allocation over it fails with an error
    rather than the process being killed. Call it after the warm-up, in a process of its own: it cannot be lifted."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(
            min(1.0, (torch.cuda.memory_allocated(device) + budget) / total), device
        )
        return "the CUDA caching allocator's limit (set_per_process_memory_fraction)"
    address_space = _status_kb("VmSize")
    if address_space is None:
        raise RuntimeError("cannot read VmSize from /proc/self/status: a CPU memory limit needs Linux")
    resource.setrlimit(resource.RLIMIT_AS, (address_space * 1024 + budget, resource.RLIM_INFINITY))
    return "RLIMIT_AS (address space of the process)"
