"""Feature dims past the tile kernels' 128 (a MoCo v3 head's 256, a CLIP tower's 512-1024): triton's wide kernels
(gpaco_kernels/triton/paco_wide.py) against the float64 reference, values and every gradient for an upstream gradient
other than 1, on dims that are not powers of two nor multiples of the feature chunks, in every dtype they take.
Under TRITON_INTERPRET=1 on CPU tensors, compiled on CUDA ones in the GPU run."""

from __future__ import annotations

import pytest
import torch

from gpaco_kernels.selfcheck import problem, run
from gpaco_kernels.tolerances import within

from helpers import GPU, TRITON_DEVICE, need_backend
from test_backends import check_against_reference, make_case

launch = pytest.importorskip("gpaco_kernels.triton.launch")

pytestmark = GPU


def _wide_runs(monkeypatch) -> list[str]:
    """The names of the wide kernels launched (and fails the test if a tile kernel runs instead)."""
    runs = []
    for name in ("_paco_wide_fwd_kernel", "_paco_wide_bwd_rows_kernel", "_paco_wide_bwd_cols_kernel"):
        kernel = getattr(launch, name)
        original = kernel.run

        def record(*args, _original=original, _name=name, **kwargs):
            runs.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", record)
    for name in ("_paco_fwd_kernel", "_paco_bwd_rows_kernel", "_paco_bwd_cols_kernel", "_paco_label_sums_kernel"):
        kernel = getattr(launch, name)

        def refuse(*args, _name=name, **kwargs):
            raise AssertionError(f"{_name} ran on features wider than launch.MAX_DIM")

        monkeypatch.setattr(kernel, "run", refuse)
    return runs


def _check(loss: str, dim: int, dtype: torch.dtype, monkeypatch) -> None:
    need_backend("triton", TRITON_DEVICE)
    runs = _wide_runs(monkeypatch)
    if dim >= 512 and TRITON_DEVICE == "cpu":  # the interpreter's time grows with chunks x blocks: 8 x 2 of them
        monkeypatch.setattr(launch, "WIDE_CHUNKS", {name: (dim // 8, dim // 2) for name in launch.WIDE_CHUNKS})
    fn, kw, grad_args = problem(loss, quick=True, dim=dim)
    with torch.no_grad():
        anchors = fn(**kw, reduction="none", backend="reference").shape[0]
    upstream = torch.linspace(-1.0, 2.0, anchors, dtype=torch.float64)
    truth = run(fn, kw, grad_args, "reference", torch.float64, "cpu", upstream)
    ref = run(fn, kw, grad_args, "reference", dtype, "cpu", upstream)
    got = run(fn, kw, grad_args, "triton", dtype, TRITON_DEVICE, upstream)
    names = ["loss", *(f"d{k}" for k in grad_args)]
    problems = [
        f"{n}: {p}" for n, g, t, r in zip(names, got, truth, ref) for p in within(g.cpu(), t, r, "triton", dtype)
    ]
    assert not problems, problems
    assert {"_paco_wide_fwd_kernel", "_paco_wide_bwd_rows_kernel"} <= set(runs), runs


@pytest.mark.parametrize("dim", [136, 256, 512, 1024])
@pytest.mark.parametrize("loss", ["gpaco", "pixel", "supcon"])  # the GPaCo LT step, the pixel loss, SupCon
def test_wide_features_match_float64(loss, dim, monkeypatch):
    _check(loss, dim, torch.float32, monkeypatch)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss", ["paco", "gpaco", "pixel", "supcon", "psc"])
def test_wide_features_in_half_precision(loss, dtype, monkeypatch):
    _check(loss, 200, dtype, monkeypatch)


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize(
    "case",
    ["base", "logits+prior", "centers+smoothing+exclude", "normalize+centers", "no-positives", "ignored",
     "detached-batch-columns"],
)  # fmt: skip
def test_wide_features_on_the_backend_grid_with_small_tiles(case, reduction, small_tiles, monkeypatch):
    """16 x 16 tiles, 32-feature products, 64-feature backward programs and column splits of 16: D 150 takes
    several of each, its last ones partial."""
    need_backend("triton", TRITON_DEVICE)
    runs = _wide_runs(monkeypatch)
    kw, grad_args = make_case(case, seed=4, dim=150)
    upstream = torch.linspace(-1.0, 2.0, kw.get("num_anchors") or kw["features"].shape[0], dtype=torch.float64)
    check_against_reference(kw, grad_args, "triton", torch.float32, reduction, upstream, TRITON_DEVICE, name=case)
    assert "_paco_wide_bwd_rows_kernel" in runs, runs


def test_the_wide_kernels_start_past_the_tile_kernels_dim():
    assert launch.MAX_DIM == 128
    x = torch.randn(4, 129)
    p_kw = dict(num_anchors=4)
    del p_kw
    assert launch.unsupported(torch.float32, 129) is None and launch.unsupported(torch.float32, 4096) is None
    assert "float32, bfloat16 or float16" in launch.unsupported(torch.float64, 129)
    del x
