"""The one op behind every loss: canonical inputs (spec), the autograd Function, the dispatcher, the backends."""

from .dispatch import BACKEND_NAMES, available_backends, resolve_backend
from .function import ParametricContrastiveFunction, per_anchor_loss
from .spec import ContrastInputs, LossConfig

__all__ = [
    "BACKEND_NAMES",
    "ContrastInputs",
    "LossConfig",
    "ParametricContrastiveFunction",
    "available_backends",
    "per_anchor_loss",
    "resolve_backend",
]
