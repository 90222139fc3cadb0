import pytest

from gpaco_kernels.ops import torch_backend


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 5 anchor rows x 7 columns: every shape in the tests then spans several tiles and segments, so the
    online log-sum-exp merge and the tile edges are exercised."""
    monkeypatch.setattr(torch_backend, "BLOCK_ROWS", 5)
    monkeypatch.setattr(torch_backend, "TILE_ELEMENTS", 35)
