import pytest

from gpaco_kernels.ops import torch_backend


@pytest.fixture
def small_tiles(monkeypatch):
    """Small tiles: every shape in the tests then spans several tiles and segments, so the online log-sum-exp merge
    and the tile edges are exercised. torch backend: 5 anchor rows x 7 columns."""
    monkeypatch.setattr(torch_backend, "BLOCK_ROWS", 5)
    monkeypatch.setattr(torch_backend, "TILE_ELEMENTS", 35)
    # The cpu backend's row blocks: the smallest (8 rows), so that 19 anchors take three blocks.
    monkeypatch.setenv("GPACO_CPU_BLOCK_BYTES", "64")
