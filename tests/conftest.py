import os

# The Triton kernels run on CPU tensors under the interpreter, which must be on before the kernels are defined,
# that is, before gpaco_kernels is imported.
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
    from gpaco_kernels.triton import paco

    for conf in paco.CONFIGS.values():
        monkeypatch.setitem(conf, "BLOCK_M", 16)
        monkeypatch.setitem(conf, "BLOCK_N", 16)
    monkeypatch.setattr(paco, "FORCE_COLS_PER_SPLIT", 16)
