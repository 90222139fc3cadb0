"""gpaco_kernels: fused, memory-lean supervised contrastive losses (SupCon, PSC, PaCo, GPaCo).

Every loss is one op (see ops/) that streams over the contrast set [class block | batch | queue] with an online
log-sum-exp and never holds the anchors x columns similarity matrix.
"""

from . import compat
from ._checks import sync_checks
from ._version import __version__
from .functional import fused_paco_loss, fused_psc_loss, fused_supcon_loss
from .modules import FusedPaCoLoss, PSCLoss, SupConLoss
from .ops import available_backends
from .ops.dispatch import is_available
from .queue import MomentumQueue

# Whether the compiled backends can run here; False until they are registered and built. Never raises.
HAS_CPU_EXT = is_available("cpu")
HAS_TRITON = is_available("triton")

__all__ = [
    "FusedPaCoLoss",
    "HAS_CPU_EXT",
    "HAS_TRITON",
    "MomentumQueue",
    "PSCLoss",
    "SupConLoss",
    "__version__",
    "available_backends",
    "compat",
    "fused_paco_loss",
    "fused_psc_loss",
    "fused_supcon_loss",
    "sync_checks",
]
