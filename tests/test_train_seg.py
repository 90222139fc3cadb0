"""python/train_seg.py on tiny runs: the segmentation set, the mIoU report, every method trains, resume equivalence,
the budget check (the dense pixel loss fails the budget, the fused one fits)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from helpers import needs_torchrun, torchrun_two_gloo_processes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
pytest.importorskip("sklearn")

import seg_data  # noqa: E402
import train_seg  # noqa: E402

TINY = ["--epochs", "2", "--batch-size", "4", "--train-size", "16", "--test-size", "8", "--threads", "1", "--quiet",
        "--no-budget-check"]  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_canvases_are_long_tailed_labelled_and_fixed():
    data = seg_data.digit_canvas_lt(train_size=200, test_size=50)
    again = seg_data.digit_canvas_lt(train_size=200, test_size=50)
    assert torch.equal(data.train.masks, again.train.masks) and torch.equal(data.test.images, again.test.images)
    assert data.train.images.shape == (200, 1, 32, 32) and data.train.masks.shape == (200, 32, 32)
    assert int(data.train.masks.min()) >= 0 and int(data.train.masks.max()) < seg_data.NUM_CLASSES
    counts = data.pixel_counts
    assert counts[0] == counts.max()  # background
    assert counts[1] > 5 * counts[10]  # digit 0 against digit 9 (20x as frequent as glyphs)
    ids = sorted(i for group in data.groups.values() for i in group)
    assert ids == list(range(1, 11))  # every digit class in exactly one group, background in none
    # Glyph pixels carry their digit's class: a pixel labelled d + 1 is bright in the image.
    bright = data.train.images[:, 0][data.train.masks > 0]
    assert bright.mean() > 0.4


def test_miou_report_from_a_known_confusion():
    confusion = torch.tensor([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    report = seg_data.miou_report(confusion, {"many": [1], "medium": [2], "few": []})
    assert report["per_class_iou"][0] == pytest.approx(100 * 8 / 11)
    assert report["per_class_iou"][1] == pytest.approx(100 * 3 / 6)
    assert math.isnan(report["per_class_iou"][2])  # a class absent from truth and prediction has no IoU
    assert report["miou"] == pytest.approx((100 * 8 / 11 + 50) / 2)


@pytest.mark.parametrize("method", train_seg.METHODS)
def test_every_method_trains_and_writes_metrics(tmp_path, method):
    assert train_seg.main(["--method", method, "--out", str(tmp_path), "--samples", "16", *TINY]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["epochs"] == 2
    assert all(math.isfinite(h["loss"]) for h in metrics["history"])
    assert 0 <= metrics["test"]["miou"] <= 100 and len(metrics["test"]["per_class_iou"]) == 11
    assert metrics["step_peak_mb"] >= 0 and len(metrics["step_seconds"]) == 2


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path):
    args = ["--method", "all-pixels", *TINY, "--epochs", "3"]
    train_seg.main([*args, "--out", str(tmp_path / "straight")])
    train_seg.main([*args, "--out", str(tmp_path / "resumed"), "--stop-after-epoch", "1"])
    train_seg.main([*args, "--out", str(tmp_path / "resumed"), "--resume"])
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"{name} differs after resume"


def test_the_dense_pixel_loss_fails_the_budget_and_the_fused_one_fits(capsys):
    args = train_seg.parse_args(["--batch-size", "2", "--memory-budget", "64MiB"])  # 2048 pixels
    check = train_seg.budget_check(args)
    assert check["pixels"] == 2048
    assert check["dense"]["status"] == "oom", check["dense"]
    assert check["fused"]["peak_mb"] < 64


def test_a_bad_budget_names_the_argument():
    with pytest.raises(SystemExit):
        train_seg.parse_args(["--memory-budget", "lots"])


@pytest.mark.slow
@needs_torchrun
def test_torchrun_two_gloo_processes(tmp_path):
    args = ["--method", "all-pixels", "--out", str(tmp_path), *TINY]
    torchrun_two_gloo_processes(ROOT / "python" / "train_seg.py", 29541, args)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs"] == 2
