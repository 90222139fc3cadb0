"""Triton launch schedule (under TRITON_INTERPRET=1): the column split chosen for few anchors x long queues, and
split ranges that cut through tiles and segments, forward and row backward, against the reference."""

from __future__ import annotations

import pytest
import torch

import gpaco_kernels as gk

from helpers import assert_close
from test_backends import make_case

paco = pytest.importorskip("gpaco_kernels.triton.paco")
pytestmark = pytest.mark.skipif("triton" not in gk.available_backends("cpu"), reason="needs TRITON_INTERPRET=1")


@pytest.mark.parametrize("kind", ["fwd", "bwd_rows"])
def test_paco_shape_splits_columns_to_fill_the_gpu(kind):
    # GPaCo ImageNet-LT: 256 anchors against 1000 classes + 256 batch rows + 8192 queue rows.
    for precision in ("half", "fp32"):
        conf = paco.CONFIGS[(kind, precision)]
        grid, per_split, splits = paco._split_grid(conf, 256, 1000 + 256 + 8192)
        assert grid[0] * grid[1] >= 100 and splits > 1  # most of an H100's 132 SMs (4 anchor blocks without)
        assert per_split % conf["BLOCK_N"] == 0 and per_split * (splits - 1) < 9448 <= per_split * splits
    # Enough anchors to fill the GPU by themselves: no split.
    assert paco._split_grid(paco.CONFIGS[(kind, "half")], 65536, 65686)[2] == 1


@pytest.mark.parametrize("cols_per_split", [None, 24, 5])  # no split; splits cutting tiles and segments
def test_split_ranges_match_the_reference(monkeypatch, small_tiles, cols_per_split):
    monkeypatch.setattr(paco, "FORCE_COLS_PER_SPLIT", cols_per_split)
    kw, grad_args = make_case("logits+prior", seed=5)
    kw = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    upstream = torch.linspace(-1.0, 2.0, kw["num_anchors"])
    results = {}
    for backend in ("reference", "triton"):
        leaves = {k: kw[k].clone().requires_grad_() for k in grad_args}
        loss = gk.fused_paco_loss(**{**kw, **leaves}, backend=backend, reduction="none")
        loss.backward(upstream)
        results[backend] = (loss.detach(), {k: v.grad for k, v in leaves.items()})
    assert_close(results["triton"][0], results["reference"][0], atol=2e-5, rtol=2e-5, name="loss")
    for k in grad_args:
        assert_close(results["triton"][1][k], results["reference"][1][k], atol=2e-5, rtol=2e-5, name=f"d{k}")


def test_gpu_model_counts_the_schedules_products():
    from gpaco_kernels.tools import gpu_model

    # Pixel loss, 4096 pixels (a multiple of every tile): forward 1 product, row backward 2, column backward 2.
    sizes = dict(anchors=4096, batch=4096, queue=0, classes=150, dim=128)
    launches = gpu_model.schedule(sizes, "bf16")
    flops = {x.kernel: x.programs * x.flops for x in launches}
    one_product = 2 * 4096 * 4096 * 128
    assert flops == pytest.approx({"fwd": one_product, "bwd_rows": 2 * one_product, "bwd_cols batch": 2 * one_product})
    model = sum(x.seconds("bf16") for x in launches)
    assert model >= gpu_model.floor_seconds(sizes, "bf16") * 5 / 3 * 0.999  # never faster than its own FLOPs at peak
