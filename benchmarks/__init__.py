"""Benchmarks of gpaco_kernels against the published losses, torch.compile and the GEMM floors (run from the repo root:
`python -m benchmarks`)."""
