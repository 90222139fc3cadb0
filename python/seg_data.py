"""digit-canvas-lt: a long-tailed semantic segmentation set built from scikit-learn's digits (no download).

Each sample is a 32x32 canvas holding 1 to 3 digits at random places (a later digit is drawn over an earlier one).
A digit is one of sklearn's 8x8 glyphs scaled 2x to 16x16; its pixels brighter than 0.25 are labelled with the digit's
class (1 + digit) and every other pixel is background (class 0): 11 classes. The image is the maximum of the drawn
glyphs plus a little Gaussian noise.

Long tail: in the training canvases digit d is drawn with probability proportional to imbalance ** (-d / 9), so digit
0 is `imbalance` times as frequent as digit 9 (default 20); the test canvases draw digits uniformly (a balanced test,
as in long-tailed classification). Glyphs are split first: 50 glyphs of each digit are kept for the test canvases
only, so a test digit is never a glyph seen in training. Many / medium / few: the digit classes ranked by their
training pixel count, the first third (digits 0-2 with the default profile), the next four, the last three; the
background class counts in the overall mIoU only. The set is fixed by its own seed (not the run's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NUM_CLASSES = 11  # background + 10 digits
SIZE = 32
GLYPH = 16


@dataclass
class SegSplit:
    images: torch.Tensor  # (n, 1, 32, 32) float32
    masks: torch.Tensor  # (n, 32, 32) int64 in [0, 11)


@dataclass
class SegSet:
    train: SegSplit
    test: SegSplit
    pixel_counts: torch.Tensor  # (11,) training pixels per class
    groups: dict  # "many" / "medium" / "few" -> list of class ids (digit classes only)
    note: str


def _glyphs():
    from sklearn.datasets import load_digits

    data = load_digits()
    glyphs = torch.from_numpy((data.images / 16.0).astype(np.float32))[:, None]
    glyphs = F.interpolate(glyphs, scale_factor=2, mode="bilinear", align_corners=False)[:, 0]  # (n, 16, 16)
    return glyphs.numpy(), data.target.astype(np.int64)


def _canvases(glyphs, labels, count, digit_probs, rng) -> SegSplit:
    by_digit = [np.flatnonzero(labels == d) for d in range(10)]
    images = np.zeros((count, SIZE, SIZE), np.float32)
    masks = np.zeros((count, SIZE, SIZE), np.int64)
    for i in range(count):
        for _ in range(rng.integers(1, 4)):
            digit = rng.choice(10, p=digit_probs)
            glyph = glyphs[rng.choice(by_digit[digit])]
            y, x = rng.integers(0, SIZE - GLYPH + 1, size=2)
            window = images[i, y : y + GLYPH, x : x + GLYPH]
            np.maximum(window, glyph, out=window)
            masks[i, y : y + GLYPH, x : x + GLYPH][glyph > 0.25] = digit + 1
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)
    return SegSplit(torch.from_numpy(images)[:, None], torch.from_numpy(masks))


def digit_canvas_lt(train_size=800, test_size=400, imbalance=20.0, test_per_digit=50, seed=1234) -> SegSet:
    glyphs, labels = _glyphs()
    rng = np.random.default_rng(seed)
    held = [rng.choice(np.flatnonzero(labels == d), test_per_digit, replace=False) for d in range(10)]
    test_idx = np.concatenate(held)
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    profile = imbalance ** (-np.arange(10) / 9.0)
    train = _canvases(glyphs[train_idx], labels[train_idx], train_size, profile / profile.sum(), rng)
    test = _canvases(glyphs[test_idx], labels[test_idx], test_size, np.full(10, 0.1), rng)
    counts = torch.bincount(train.masks.flatten(), minlength=NUM_CLASSES)
    ranked = [int(c) for c in torch.argsort(counts[1:], descending=True) + 1]
    groups = {"many": ranked[:3], "medium": ranked[3:7], "few": ranked[7:]}
    note = (
        f"digit-canvas-lt: {train_size} train / {test_size} test canvases of 32x32, digit 0 {imbalance:g}x as frequent "
        f"as digit 9 in training (balanced test); training pixels per class (0 = background): {counts.tolist()}"
    )
    return SegSet(train, test, counts, groups, note)


def miou_report(confusion: torch.Tensor, groups: dict) -> dict:
    """IoU per class (%) from a (C, C) confusion matrix (rows: truth, columns: prediction); mIoU overall and over
    each group of digit classes."""
    confusion = confusion.double()
    inter = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - inter
    iou = torch.where(union > 0, 100.0 * inter / union.clamp_min(1), torch.full_like(inter, float("nan")))
    per_class = iou.tolist()

    def mean(values):  # over the classes that have an IoU; NaN when none does
        values = [v for v in values if not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")

    report = {"miou": mean(per_class)}
    for name, ids in groups.items():
        report[name] = mean([per_class[i] for i in ids])
    report["per_class_iou"] = per_class
    return report
