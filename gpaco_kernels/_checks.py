"""Argument checks shared by every public entry point. Each raises TypeError (wrong kind of object or dtype) or
ValueError (wrong shape, range or value) naming the argument and what was seen, before any compute."""

from __future__ import annotations

import math
import numbers
import os

import torch


def tensor(name: str, value, *, floating: bool | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating is True and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if floating is False and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor of class labels, got dtype {value.dtype}")
    return value


def shape(name: str, value: torch.Tensor, expected: tuple, meaning) -> None:
    """expected holds ints or None (any size); meaning spells the expected shape for the message: a string, or a
    function returning one where it names sizes, so that the message is formatted only when the check fails (under
    torch.compile, formatting a size specializes the graph on it: a queue that grows would recompile every step)."""
    ok = value.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, value.shape))
    if not ok:
        raise ValueError(
            f"{name} must have shape {meaning() if callable(meaning) else meaning}, got {tuple(value.shape)}"
        )


def same_device(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.device != ref.device:
        raise ValueError(f"{name} is on {value.device} but {ref_name} is on {ref.device}; put them on one device")


def positive(name: str, value) -> float:
    number = real(name, value)
    if not number > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def non_negative(name: str, value) -> float:
    number = real(name, value)
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return number


def real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    # Comparisons, not math.isfinite: torch.compile(dynamic=True) traces floats as symbols, which math.isfinite
    # cannot take (NaN fails both comparisons).
    if not -math.inf < value < math.inf:
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return value


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def choice(name: str, value, options) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
    return value


# -- checks of tensor values ------------------------------------------------------------------------------------
# Reading a tensor's values on the host is free for CPU tensors and a stream synchronization anywhere else. So value
# checks read values only where the tensors are on the CPU (and a CPU backend computes); elsewhere (CUDA, meta, and
# the Triton backend, whose kernels check labels themselves) they are queued on the device with
# torch._assert_async, which fails the stream without a sync (on CUDA: a device-side assert at the next sync). For
# debugging, sync_checks(True) or GPACO_SYNC_CHECKS=1 reads values on every device and raises ValueError naming the
# argument and the value seen, at the cost of a synchronization per check.

_SYNC_CHECKS = os.environ.get("GPACO_SYNC_CHECKS", "") not in ("", "0")


def sync_checks(enabled: bool | None = None) -> bool:
    """Whether value checks read values back on every device (a host sync each) to raise a clear ValueError;
    with an argument, set it. Default False, or GPACO_SYNC_CHECKS=1. Returns the setting in force."""
    global _SYNC_CHECKS
    if enabled is not None:
        _SYNC_CHECKS = flag("enabled", enabled)
    return _SYNC_CHECKS


def reads_values(device: torch.device) -> bool:
    """Whether a value check may read tensors on this device back to the host. Never while torch.compile traces
    (a read would break the graph)."""
    if torch.compiler.is_compiling():
        return False
    return device.type == "cpu" or (_SYNC_CHECKS and device.type != "meta")


def out_of_range(labels: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Bool mask of labels that are neither a class index nor ignore_index."""
    return ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)


def range_message(name: str, num_classes: int, ignore_index: int) -> str:
    return f"{name} must be in [0, {num_classes}) (the number of classes) or equal ignore_index={ignore_index}"


def label_range(name: str, labels: torch.Tensor, num_classes: int, ignore_index: int, *, on_host: bool) -> None:
    """Labels other than ignore_index must index the class block. on_host: read the values and raise ValueError with
    the first bad one; else queue the check on the device (no sync)."""
    if not on_host:
        bad = out_of_range(labels, num_classes, ignore_index)
        torch._assert_async(~bad.any(), range_message(name, num_classes, ignore_index) + ", found a value outside")
        return
    if labels.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(labels)).tolist()  # two small ops, one read
    if 0 <= lo and hi < num_classes:
        return  # the common case: every label is a class (ignored ones, when present, are outside and go below)
    bad = out_of_range(labels, num_classes, ignore_index)
    if bool(bad.any()):
        raise ValueError(f"{range_message(name, num_classes, ignore_index)}, found {int(labels[bad][0])}")


def is_number_sequence(value) -> bool:
    """A list or tuple of Python real numbers (not bools): counts the host can check without a tensor."""
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value
    )


def host_class_counts(value, num_classes: int | None) -> torch.Tensor:
    """class_counts checked and kept on the CPU, where the check reads values for free: what a module holds, set
    once and reused by every step."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    return class_counts(value, num_classes)


def _host_counts(values) -> None:
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError("class_counts must be finite and >= 0")
    if values and sum(values) <= 0:
        raise ValueError("class_counts must have a positive sum")


def class_counts(value, num_classes: int | None) -> torch.Tensor:
    """Counts as a float64 tensor on the device they came on (a list: the CPU); the prior they define must exist
    (finite, non-negative, positive sum). num_classes None accepts any length."""
    checked_on_host = is_number_sequence(value)
    if checked_on_host:
        counts = torch.tensor(value, dtype=torch.float64)
    elif isinstance(value, torch.Tensor):
        counts = value.detach()
    else:
        try:
            counts = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                f"class_counts must be a tensor or a sequence of numbers, got {type(value).__name__}"
            ) from exc
    if counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(f"class_counts must hold real numbers, got dtype {counts.dtype}")
    if counts.dim() != 1 or counts.shape[0] == 0 or (num_classes is not None and counts.shape[0] != num_classes):
        expected = "(C,)" if num_classes is None else f"({num_classes},)"
        raise ValueError(f"class_counts must have shape {expected} (one count per class), got {tuple(counts.shape)}")
    counts = counts.to(torch.float64)
    if checked_on_host:
        _host_counts(value)  # Python numbers: checked as such (no tensor op reads them back)
        return counts
    if torch.compiler.is_compiling():
        return counts
    valid = torch.isfinite(counts).all() & (counts >= 0).all()
    if not reads_values(counts.device):
        torch._assert_async(valid & (counts.sum() > 0), "class_counts must be finite and >= 0 with a positive sum")
        return counts
    if not bool(valid):
        raise ValueError("class_counts must be finite and >= 0")
    if float(counts.sum()) <= 0:
        raise ValueError("class_counts must have a positive sum")
    return counts
