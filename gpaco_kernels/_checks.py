"""Argument checks shared by every public entry point. Each raises TypeError (wrong kind of object or dtype) or
ValueError (wrong shape, range or value) naming the argument and what was seen, before any compute."""

from __future__ import annotations

import math

import torch


def tensor(name: str, value, *, floating: bool | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating is True and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if floating is False and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor of class labels, got dtype {value.dtype}")
    return value


def shape(name: str, value: torch.Tensor, expected: tuple, meaning: str) -> None:
    """expected holds ints or None (any size); meaning spells the expected shape for the message."""
    ok = value.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, value.shape))
    if not ok:
        raise ValueError(f"{name} must have shape {meaning}, got {tuple(value.shape)}")


def same_device(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.device != ref.device:
        raise ValueError(f"{name} is on {value.device} but {ref_name} is on {ref.device}; put them on one device")


def same_dtype(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {value.dtype} but {ref_name} has dtype {ref.dtype}; use one float dtype")


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
    if not math.isfinite(value):
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


def reading_values_allowed() -> bool:
    """Checks that read tensor values (a host sync) are skipped while torch.compile traces: they would break the
    graph. The compiled kernels check label ranges themselves."""
    return not torch.compiler.is_compiling()


def label_range(name: str, labels: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Labels other than ignore_index must index the class block."""
    if not reading_values_allowed():
        return
    kept = labels[labels != ignore_index]
    if kept.numel() == 0:
        return
    low, high = int(kept.min()), int(kept.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"{name} must be in [0, {num_classes}) (the number of classes) or equal ignore_index={ignore_index}, "
            f"found {bad}"
        )


def class_counts(value, num_classes: int | None, device: torch.device) -> torch.Tensor:
    """Counts as a float64 tensor on device; the prior they define must exist (non-negative, positive sum).
    num_classes None accepts any length."""
    if isinstance(value, torch.Tensor):
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
    counts = counts.to(device=device, dtype=torch.float64)
    if not reading_values_allowed():
        return counts
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
        raise ValueError("class_counts must be finite and >= 0")
    if float(counts.sum()) <= 0:
        raise ValueError("class_counts must have a positive sum")
    return counts
