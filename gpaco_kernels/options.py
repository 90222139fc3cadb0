"""The options of each loss and their defaults, written once.

The functional losses take them as keyword arguments (their defaults read from here), the modules hold them as one
of these objects (``loss_fn.options``; change a field to change the next call, e.g. a temperature schedule), and
tests/test_api.py checks that every functional, module and the argument check agree with these classes. The compat
modules keep the published defaults of the code they replace, which differ on purpose.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass


@dataclass
class PaCoOptions:
    """fused_paco_loss and FusedPaCoLoss (see fused_paco_loss for each option's meaning)."""

    alpha: float = 1.0  # weight of sample positives
    beta: float = 1.0  # weight of the class positive
    gamma: float = 1.0  # weight of samples in the denominator
    temperature: float = 0.07  # t, batch and queue columns
    base_temperature: float | None = None  # tb (None: t); the loss is scaled by t / tb
    center_temperature: float = 1.0  # tc, the class block
    label_smoothing: float = 0.0
    exclude_positive_class: bool = False
    ignore_index: int = -100
    normalize: bool = False
    reduction: str = "mean"
    backend: str = "auto"


@dataclass
class SupConOptions:
    """fused_supcon_loss and SupConLoss."""

    temperature: float = 0.07
    base_temperature: float = 0.07
    contrast_mode: str = "all"
    normalize: bool = False
    ignore_index: int = -100
    reduction: str = "mean"
    backend: str = "auto"


@dataclass
class PSCOptions:
    """fused_psc_loss and PSCLoss."""

    temperature: float = 0.1
    exclude_positive_class: bool = True
    normalize: bool = True
    ignore_index: int = -100
    reduction: str = "mean"
    backend: str = "auto"


PACO, SUPCON, PSC = PaCoOptions(), SupConOptions(), PSCOptions()  # the defaults, read by the signatures


def make_options(cls, owner: str, given: dict):
    """cls(**given), with an error that names the owner and lists the options it has, for a misspelt name."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise TypeError(f"{owner} got unknown option(s) {', '.join(unknown)}; its options are {', '.join(names)}")
    return cls(**given)


def as_kwargs(options) -> dict:
    # Not dataclasses.asdict: it deep-copies every field on every call.
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


def options_repr(options) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in as_kwargs(options).items())


def with_option_parameters(init, cls):
    """Give a module's ``__init__(self, ..., **options)`` the signature that lists each option of cls with its
    default (keyword-only), so that help() and inspect.signature show them."""
    params = list(inspect.signature(init).parameters.values())
    var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    head = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    options = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for f in dataclasses.fields(cls)
    ]
    assert var_kw, "the module's __init__ takes the options as **options"
    init.__signature__ = inspect.Signature(head + options)
    return init
