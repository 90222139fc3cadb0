"""Models for train.py: an encoder (a small CNN for 8x8 digits, ResNet-32 for CIFAR), the projection MLP and the
linear classifier of the published PaCo/GPaCo code."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """For 8x8 digits: three 3x3 convolutions (32, 64, 128 channels) with BN and ReLU, one 2x2 pool, global pool."""

    out_dim = 128

    def __init__(self, in_channels: int = 1):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.net = nn.Sequential(
            *block(in_channels, 32), *block(32, 64), nn.MaxPool2d(2), *block(64, 128), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x):
        return self.net(x).flatten(1)


class _BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet32(nn.Module):
    """The CIFAR ResNet-32 of He et al.: 3 stages of 5 basic blocks (16, 32, 64 channels), global pool."""

    out_dim = 64

    def __init__(self, in_channels: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(5):
                layers.append(_BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten(1)


class LTNet(nn.Module):
    """encoder -> (classifier logits on the encoder features, L2-normalized projection for the contrastive loss)."""

    def __init__(self, dataset: str, num_classes: int, feat_dim: int = 128):
        super().__init__()
        self.encoder = SmallCNN(1) if dataset == "digits-lt" else ResNet32(3)
        width = self.encoder.out_dim
        self.projection = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, feat_dim))
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        h = self.encoder(x)
        return self.classifier(h), nn.functional.normalize(self.projection(h), dim=1)
