"""_paco_bwd_one_pass_kernel: the column backward that also adds the batch columns' part of dAnchors.

The same kernel as _paco_bwd_cols_kernel (paco_bwd_cols.py), launched with ANCHOR_GRAD on the label-sums path for
batch columns: each tile of H it forms for dColumns (H^T A) also gives dAnchors' part H X, added by float32 atomics
into a zeroed (A, D) buffer, so the row kernel skips the batch columns (its BATCH_BY_COLUMNS) and the logits of
those tiles are computed once instead of twice (three products per tile instead of four, one exp per logit
instead of two). FlashAttention-2's backward has this shape. The atomics make the sum's order, and so the last
bits of dAnchors, vary from run to run: launch.BACKWARD chooses it, and torch.use_deterministic_algorithms(True)
keeps the two-kernel backward. Its own autotuner: its candidates differ (its extra accumulator), and autotune must
restore the buffer the atomics add into after each timing run.
"""

from __future__ import annotations

from .configs import autotune
from .paco_bwd_cols import _paco_bwd_cols_kernel

_paco_bwd_one_pass_kernel = autotune("bwd_one_pass", restore_value=["grad_anchor_ptr"])(_paco_bwd_cols_kernel.fn)
