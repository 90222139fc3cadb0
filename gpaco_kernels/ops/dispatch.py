"""Backend registry and selection. A backend is one module in this package exposing:

    NAME                   its name
    availability()         None when usable here, else a sentence saying why not and what to install
    device_unsupported(t)  optional: None when it runs on tensors of device type t ("cpu", "cuda"), else why not
    inputs_unsupported(dtype, dim)
                           optional: None when it takes features of this dtype and feature dim, else why not
    OPS                    (forward op, backward op) made by ops.op.define_backend_ops: the one op's schema, fake and
                           autograd formula around this backend's two implementations (absent when unavailable)
    UNIT_GRADIENTS         optional: True when its forward can also return the gradients for an upstream gradient
                           of 1 (worth asking for with 'mean' and 'sum')
    EAGER                  optional: ops.op.define_eager of the same two implementations, the loss without the
                           dispatcher in eager mode (whose per-call cost is more than small kernels'); torch.compile,
                           opcheck and fake tensors always go through OPS

except "reference", which exposes loss(x, p) and is differentiated by plain autograd (the oracle).
"""

from __future__ import annotations

import importlib
import warnings

import torch

from .op import call_forward
from .spec import ContrastInputs, LossConfig

# name -> module (relative to gpaco_kernels.ops). Later backends ("cpu", "triton") add one line here and a file.
_BACKEND_MODULES = {
    "reference": ".reference",
    "torch": ".torch_backend",
    "cpu": ".cpu_backend",
    "triton": ".triton_backend",
}

# What "auto" tries on each device type, best first; the first available wins. "torch" is always available, so
# "auto" never fails.
_AUTO_ORDER = {"cpu": ("cpu", "torch"), "cuda": ("triton", "torch")}

BACKEND_NAMES = ("auto", *_BACKEND_MODULES)


def _import_all():
    """Import every backend module once, keeping the failure of any that cannot be imported. Done up front so that
    selecting a backend is a dict lookup, which torch.compile traces without a graph break."""
    loaded = {}
    for name, module_name in _BACKEND_MODULES.items():
        try:
            loaded[name] = importlib.import_module(module_name, __package__)
        except Exception as exc:  # a broken optional backend must not break the package
            loaded[name] = exc
    return loaded


_LOADED = _import_all()


def load_backend(name: str):
    module = _LOADED[name]
    if isinstance(module, Exception):
        raise ImportError(f"backend {name!r} failed to import: {module}") from module
    return module


def backend_unavailable_reason(name: str):
    """None when the backend can run here, else why not (import failures included)."""
    module = _LOADED[name]
    if isinstance(module, Exception):
        return f"importing it failed: {type(module).__name__}: {module}"
    return module.availability()


def device_unsupported_reason(name: str, device_type: str):
    """None when the (available) backend runs on tensors of device_type, else why not."""
    check = getattr(_LOADED[name], "device_unsupported", None)
    return None if check is None else check(device_type)


def is_available(name: str) -> bool:
    return name in _BACKEND_MODULES and backend_unavailable_reason(name) is None


def available_backends(device_type: str | None = None):
    """Backends usable here; with device_type, only those that run on tensors of that device type."""
    return tuple(
        name
        for name in _BACKEND_MODULES
        if backend_unavailable_reason(name) is None
        and (device_type is None or device_unsupported_reason(name, device_type) is None)
    )


def inputs_unsupported_reason(name: str, dtype: torch.dtype | None, dim: int | None):
    """None when the (available) backend takes features of this dtype and feature dim (None: not asked), else why
    not."""
    check = getattr(_LOADED[name], "inputs_unsupported", None)
    return None if check is None or dtype is None else check(dtype, dim)


def _auto(device_type: str, dtype=None, dim=None) -> str:
    for candidate in _AUTO_ORDER.get(device_type, ("torch",)):
        usable = backend_unavailable_reason(candidate) is None
        if not usable and candidate == "triton" and device_type == "cuda":
            _warn_once_without_triton()
        if usable and device_unsupported_reason(candidate, device_type) is None:
            if inputs_unsupported_reason(candidate, dtype, dim) is None:
                return candidate
    raise RuntimeError("no backend is available; the 'torch' backend should always be")  # unreachable by design


_WARNED_WITHOUT_TRITON = []


def _warn_once_without_triton() -> None:
    """On CUDA tensors 'auto' takes the pure-PyTorch backend when the Triton one cannot load (no triton, or one below
    the floor): it works, at the dense formula's memory, so say why once per process."""
    if not _WARNED_WITHOUT_TRITON:
        _WARNED_WITHOUT_TRITON.append(True)
        warnings.warn(
            f"backend='auto' runs the 'torch' backend on CUDA tensors (it holds the anchors x contrast matrix) "
            f"because the 'triton' backend is unavailable: {backend_unavailable_reason('triton')}",
            stacklevel=4,
        )


def resolve_backend(name: str, device_type: str = "cpu", dtype: torch.dtype | None = None, dim: int | None = None,
                    argument: str = "features") -> str:  # fmt: skip
    """Turn a user's backend argument into a concrete backend name for tensors on device_type (and, when given, the
    features' dtype and feature dim, named `argument` in messages), or raise ValueError saying why it can't run and
    what would. "auto" never picks a backend that refuses the inputs."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {list(BACKEND_NAMES)}, got {name!r}")
    if name == "auto":
        return _auto(device_type, dtype, dim)
    reason = backend_unavailable_reason(name)
    if reason is not None:
        raise ValueError(f"backend={name!r} is not available here: {reason}")
    reason = device_unsupported_reason(name, device_type)
    if reason is not None:
        raise ValueError(f"backend={name!r} cannot run on {device_type} tensors: {reason}")
    reason = inputs_unsupported_reason(name, dtype, dim)
    if reason is not None:
        raise ValueError(
            f"backend={name!r} cannot take {argument} of dtype {str(dtype).replace('torch.', '')} and feature dim "
            f"{dim}: {reason}; backend='auto' runs {_auto(device_type, dtype, dim)!r} for these inputs"
        )
    return name


def loss(x: ContrastInputs, cfg: LossConfig, backend_name: str) -> torch.Tensor:
    """The op's loss through the named (already resolved) backend, reduced as cfg.reduction says, in the features'
    dtype."""
    p = cfg.op_params()
    backend = load_backend(backend_name)
    if backend_name == "reference":
        return backend.loss(x, p)
    grads_wanted = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x.features, x.center_logits, x.centers)
    )
    unit = getattr(backend, "UNIT_GRADIENTS", False) and cfg.reduced and grads_wanted
    eager = getattr(backend, "EAGER", None)
    if eager is not None and not torch.compiler.is_compiling():
        out = eager(x, p, unit)
        if out is not None:
            return out
    return call_forward(backend.OPS[0], x, p, unit)[0]
