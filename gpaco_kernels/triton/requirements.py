"""The torch and Triton releases the kernels need, checked before anything of Triton's is imported.

The floors: Triton 3.3 and torch 2.7, the release that pins it. A GPU user gets the Triton that their torch pins, so
the kernels are written in the language every release from the floor on takes, and what only newer ones have (tensor
descriptors) is gated where their dependency finder cannot see it (tiles.DESCRIPTORS). Triton 3.2 (torch 2.6) is
below the floor: its compiler aborts on the half-precision column backward for sm_90 (an assertion in
LinearLayout::reshapeOuts at the 8-warp 64 x 64 tile), and the other tiles tried there spill in their loop.
`python -m tools.triton_matrix` compiles and tests the kernels with each release (benchmarks/results/
triton_matrix.txt).
"""

from __future__ import annotations

import re

TORCH_FLOOR = (2, 7)
TRITON_FLOOR = (3, 3)
# Interpreters before this release hold a loaded scalar as a one-element array and take a loop bound of it with int(),
# which numpy 2.4 refuses (TypeError: only 0-dimensional arrays can be converted to Python scalars).
INTERPRETER_NUMPY_FIXED = (3, 7)


class UnsupportedVersion(ImportError):
    """torch or Triton is older than the kernels need (the backend is then unavailable, with this as the reason)."""


def release(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as '2.13.0+cpu' or '3.2.0'; (0, 0) when it does not parse."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def unsupported(torch_version: str, triton_version: str) -> str | None:
    """Why these torch and Triton versions cannot run the kernels, or None."""
    floors = "torch >= {}.{} and triton >= {}.{}".format(*TORCH_FLOOR, *TRITON_FLOOR)
    if release(torch_version) < TORCH_FLOOR:
        return (
            f"the Triton kernels need {floors}; found torch {torch_version}. Upgrade torch (its CUDA build brings "
            f"the Triton it pins): pip install 'torch>={TORCH_FLOOR[0]}.{TORCH_FLOOR[1]}'"
        )
    if release(triton_version) < TRITON_FLOOR:
        return (
            f"the Triton kernels need {floors}; found triton {triton_version} beside torch {torch_version}. "
            f"Install the Triton your torch pins (pip install --force-reinstall torch brings it), or "
            f"pip install 'triton>={TRITON_FLOOR[0]}.{TRITON_FLOOR[1]}'"
        )
    return None


def check() -> None:
    """Raise UnsupportedVersion when the installed torch or Triton is below the floor (ImportError when Triton is
    missing)."""
    import torch
    import triton  # ImportError when absent

    reason = unsupported(torch.__version__, triton.__version__)
    if reason is not None:
        raise UnsupportedVersion(reason)


def interpreter_unsupported(triton_version: str, numpy_version: str) -> str | None:
    """Why this Triton's interpreter (TRITON_INTERPRET=1) cannot run the kernels beside this numpy, or None."""
    if release(triton_version) < INTERPRETER_NUMPY_FIXED and release(numpy_version) >= (2, 4):
        return (
            f"the interpreter of triton {triton_version} needs numpy < 2.4 (found numpy {numpy_version}): "
            f"pip install 'numpy<2.4', or triton >= {INTERPRETER_NUMPY_FIXED[0]}.{INTERPRETER_NUMPY_FIXED[1]}"
        )
    return None


def check_interpreter() -> None:
    """Under TRITON_INTERPRET=1, raise UnsupportedVersion when this Triton's interpreter cannot run beside numpy."""
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        import numpy
        import triton

        reason = interpreter_unsupported(triton.__version__, numpy.__version__)
        if reason is not None:
            raise UnsupportedVersion(reason)
