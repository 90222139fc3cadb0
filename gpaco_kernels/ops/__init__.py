"""The one op behind every loss: canonical inputs and shared algebra (spec), the op's registration (op), the
dispatcher, and one file per backend."""

from .dispatch import BACKEND_NAMES, available_backends, loss, resolve_backend
from .spec import ContrastInputs, LossConfig, OpParams

__all__ = [
    "BACKEND_NAMES",
    "ContrastInputs",
    "LossConfig",
    "OpParams",
    "available_backends",
    "loss",
    "resolve_backend",
]
