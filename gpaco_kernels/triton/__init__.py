"""Triton kernels of the fused loss: one file per kernel (paco_fwd, paco_bwd_rows, paco_bwd_cols), their shared
tile helpers (tiles), the configurations autotune picks from (configs), and the launchers (launch)."""
