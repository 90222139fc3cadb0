"""Long-tailed datasets for train.py: digits-lt (scikit-learn's bundled 8x8 digits, no download) and CIFAR-10/100-LT
(from a local folder in the standard python-pickle format), with the exponential profile of the published code."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Split:
    images: torch.Tensor  # (n, channels, h, w) float32 in [0, 1]
    labels: torch.Tensor  # (n,) int64


@dataclass
class LongTailed:
    name: str
    train: Split
    test: Split
    num_classes: int
    counts: torch.Tensor  # training images per class
    many_above: int  # many-shot: more than this many training images
    few_below: int  # few-shot: fewer than this many
    threshold_note: str


def long_tail_counts(max_per_class: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """n_c = max * (1 / IF)^(c / (C - 1)): class 0 keeps max, the last class max / IF (the published profile)."""
    if imbalance_factor < 1:
        raise ValueError(f"imbalance_factor must be >= 1, got {imbalance_factor}")
    if num_classes == 1:
        return [max_per_class]
    return [int(max_per_class * (1.0 / imbalance_factor) ** (c / (num_classes - 1))) for c in range(num_classes)]


def _subsample(images, labels, counts, rng):
    keep = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n:
            raise ValueError(f"class {c} has {len(idx)} images, the profile asks for {n}")
        keep.append(rng.choice(idx, size=n, replace=False))
    keep = np.sort(np.concatenate(keep))
    return images[keep], labels[keep]


def _split(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(images)).float(), torch.from_numpy(labels).long())


def digits_lt(imbalance_factor: float = 50.0, test_per_class: int = 50, seed: int = 0) -> LongTailed:
    """sklearn's digits (1797 images, 10 classes, ~180 each): a balanced test split of test_per_class per class
    kept apart, the rest made long-tailed from its smallest class size down by imbalance_factor."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8)
    labels = data.target.astype(np.int64)
    rng = np.random.default_rng(1234)  # the split is part of the dataset, not of the run's seed
    test_idx = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), test_per_class, replace=False) for c in range(10)]
    )
    rest = np.setdiff1d(np.arange(len(labels)), test_idx)
    max_per_class = min(int((labels[rest] == c).sum()) for c in range(10))
    counts = long_tail_counts(max_per_class, 10, imbalance_factor)
    train_images, train_labels = _subsample(images[rest], labels[rest], counts, rng)
    # Thresholds of the published split (many > 100, few < 20 of a 500-image head class) scaled to this head.
    scale = max_per_class / 500.0
    many, few = round(100 * scale), round(20 * scale)
    note = (
        f"digits-lt: head class {max_per_class} images, so many > {many} and few < {few} (CIFAR's 100/20 x {scale:.2f})"
    )
    return LongTailed(
        "digits-lt",
        _split(train_images, train_labels),
        _split(images[test_idx], labels[test_idx]),
        10,
        torch.tensor(counts),
        many,
        few,
        note,
    )


CIFAR_FILES = {
    "cifar10-lt": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels", 10),
    "cifar100-lt": ("cifar-100-python", ["train"], "test", b"fine_labels", 100),
}


def _load_pickles(folder, names, label_key):
    images, labels = [], []
    for name in names:
        path = os.path.join(folder, name)
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images).astype(np.float32) / 255.0, np.concatenate(labels)


def cifar_lt(name: str, data_dir: str | None, imbalance_factor: float = 100.0, seed: int = 0) -> LongTailed:
    folder_name, train_files, test_file, label_key, num_classes = CIFAR_FILES[name]
    folder = os.path.join(data_dir or "", folder_name)
    expected = [os.path.join(folder, f) for f in [*train_files, test_file]]
    missing = [p for p in expected if not os.path.isfile(p)]
    if data_dir is None or missing:
        raise FileNotFoundError(
            f"{name} needs the CIFAR python-pickle files under --data-dir (expected {folder_name}/ with "
            f"{', '.join(train_files + [test_file])}); "
            + ("no --data-dir was given" if data_dir is None else f"missing: {', '.join(missing)}")
            + ". Download and unpack https://www.cs.toronto.edu/~kriz/ into that directory."
        )
    train_images, train_labels = _load_pickles(folder, train_files, label_key)
    test_images, test_labels = _load_pickles(folder, [test_file], label_key)
    max_per_class = min(int((train_labels == c).sum()) for c in range(num_classes))
    counts = long_tail_counts(max_per_class, num_classes, imbalance_factor)
    train_images, train_labels = _subsample(train_images, train_labels, counts, np.random.default_rng(1234))
    return LongTailed(
        name,
        _split(train_images, train_labels),
        _split(test_images, test_labels),
        num_classes,
        torch.tensor(counts),
        100,
        20,
        f"{name}: many > 100, few < 20 training images (the published split)",
    )


def load(name: str, data_dir: str | None, imbalance_factor: float) -> LongTailed:
    if name == "digits-lt":
        return digits_lt(imbalance_factor)
    if name in CIFAR_FILES:
        return cifar_lt(name, data_dir, imbalance_factor)
    raise ValueError(f"dataset must be one of ['digits-lt', 'cifar10-lt', 'cifar100-lt'], got {name!r}")


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation (pad and crop: 1 pixel for 8x8, 4 for 32x32) and, for CIFAR, horizontal flips."""
    n, _, h, w = images.shape
    pad = 1 if h <= 8 else 4
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    out = torch.stack([padded[i, :, y : y + h, x : x + w] for i, (y, x) in enumerate(zip(dy, dx))])
    if h > 8:
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(3)
    return out
