"""Triton GPU kernels of the fused loss (paco.py) and their launchers. Nothing here queries a GPU at import time.
On a machine without a GPU the same kernels run on CPU tensors under TRITON_INTERPRET=1 (set before import)."""
