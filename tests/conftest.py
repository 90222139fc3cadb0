import os

# The Triton kernels run on CPU tensors under the interpreter, which must be on before the kernels are defined,
# that is, before gpaco_kernels is imported. (A GPU run sets TRITON_INTERPRET=0 to test the compiled kernels.)
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from gpaco_kernels.ops import torch_backend  # noqa: E402


@pytest.fixture
def small_tiles(monkeypatch):
    """Small tiles: every shape in the tests then spans several tiles and segments, so the online log-sum-exp merge
    and the tile edges are exercised. torch backend: 5 anchor rows x 7 columns."""
    monkeypatch.setattr(torch_backend, "BLOCK_ROWS", 5)
    monkeypatch.setattr(torch_backend, "TILE_ELEMENTS", 35)
    # The cpu backend's row blocks: the smallest (8 rows), so that 19 anchors take three blocks.
    monkeypatch.setenv("GPACO_CPU_BLOCK_BYTES", "64")
    # Triton: 16 x 16 tiles, and the columns split into ranges of 16 (forward and row backward), merged afterwards.
    try:
        import triton

        from gpaco_kernels.triton import launch
    except ImportError:  # no triton here: the triton tests fail on their own, saying so (helpers.need_backend)
        return
    small = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    for kernel in (
        launch._paco_fwd_kernel,
        launch._paco_bwd_rows_kernel,
        launch._paco_bwd_cols_kernel,
        launch._paco_bwd_one_pass_kernel,
        launch._paco_wide_fwd_kernel,
        launch._paco_wide_bwd_rows_kernel,
        launch._paco_wide_bwd_cols_kernel,
    ):
        monkeypatch.setattr(kernel, "configs", small)
    # The wide kernels (D > 128): products over 32 features at a time, backward programs of 64 features each.
    monkeypatch.setattr(launch, "WIDE_CHUNKS", {name: (32, 64) for name in launch.WIDE_CHUNKS})
    monkeypatch.setattr(launch, "FORCE_COLS_PER_SPLIT", 16)
    # The positives by label sums on every shape (the default tiles take the heuristic: compares in the tiles on the
    # tests' small shapes), the sums walking each group 4 rows at a time.
    monkeypatch.setattr(launch, "FORCE_LABEL_SUMS", True)
    monkeypatch.setattr(launch, "LABEL_SUMS_BLOCK_R", 4)
    # The finalize kernel's one program walks the anchors in several blocks; the epilogue has several programs.
    monkeypatch.setattr(launch, "FINALIZE_BLOCK", 16)
    monkeypatch.setattr(launch, "EPILOGUE_BLOCK_R", 8)
