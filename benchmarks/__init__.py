"""Benchmarks of gpaco_kernels against the published losses, torch.compile and the GEMM floor (run from the repo root:
`python -m benchmarks`)."""
