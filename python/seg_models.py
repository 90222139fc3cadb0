"""A small fully convolutional network for digit-canvas-lt: full resolution throughout (every pixel keeps its own
embedding), a growing receptive field from dilated convolutions, a pixel classifier and a projection head."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


def _block(cin, cout, dilation):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class SegNet(nn.Module):
    """forward(images (B, 1, H, W)) -> (logits (B, C, H, W), embeddings (B, D, H, W), L2-normalized over D)."""

    def __init__(self, num_classes: int, width: int = 48, dim: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            _block(1, width, 1), _block(width, width, 2), _block(width, width, 4), _block(width, width, 8),
            _block(width, width, 1),
        )  # fmt: skip
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.projection = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, dim, 1))

    def forward(self, images):
        h = self.body(images)
        return self.classifier(h), F.normalize(self.projection(h), dim=1)
