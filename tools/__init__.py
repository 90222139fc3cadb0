"""Developer-facing commands and helpers: standard workloads and a peak-memory probe."""
