"""Backbones: a CPU-efficient small CNN (default), a CIFAR-style ResNet-18 and a small ViT (:mod:`.vit`).

Every backbone maps a float image batch ``(N, C, H, W)`` in [0, 1] to features ``(N, feat_dim)`` and exposes
``feat_dim``. Input normalisation lives inside the backbone (``mean``/``std`` buffers) so that attacks and
evaluation always work on [0, 1] images.
"""
from __future__ import annotations

import torch
from torch import nn

from .normalize import Normalize
from .vit import ViT


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """VGG-style CNN: stages of ``convs_per_stage`` 3x3 conv-BN-ReLU, 2x2 max-pool between stages.

    ``widths=(32, 64, 128)`` with 2 convs per stage is the 6-conv reference CNN of the benchmarks. The features are
    the last stage average-pooled to ``pool x pool`` and flattened (``pool=1`` is global average pooling); keeping a
    coarse spatial layout is what lets a small CNN beat raw pixels on 28x28 images.
    """

    def __init__(self, in_channels: int = 1, widths=(32, 64, 128), convs_per_stage: int = 2, pool: int = 2,
                 downsample: str = "max",
                 mean: float = 0.5, std: float = 0.25):
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        cin = in_channels
        for s, w in enumerate(widths):
            if s > 0:
                layers.append(nn.MaxPool2d(2) if downsample == "max" else nn.AvgPool2d(2))
            for _ in range(convs_per_stage):
                layers.append(conv_bn_relu(cin, w))
                cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.feat_dim = cin * pool * pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(self.normalize(x))), 1)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
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
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem, no max-pool, 4 stages of 2 basic blocks, global average pooling."""

    def __init__(self, in_channels: int = 3, width: int = 64, mean: float = 0.5, std: float = 0.25):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        blocks = []
        cin = width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            for j in range(2):
                blocks.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = cin

    def forward(self, x):
        return torch.flatten(self.pool(self.layers(self.stem(self.normalize(x)))), 1)


def build_backbone(name: str, in_channels: int, **kwargs) -> nn.Module:
    if name == "cnn":
        return SmallCNN(in_channels=in_channels, **kwargs)
    if name == "resnet18":
        return ResNet18(in_channels=in_channels, **kwargs)
    if name == "vit":
        return ViT(in_channels=in_channels, **kwargs)
    raise ValueError(f"unknown backbone {name!r} (choose cnn, resnet18 or vit)")
