"""ResNets (He et al. 2016) for small and real resolutions: ResNet-18 (basic blocks, [2, 2, 2, 2]) and ResNet-50
(bottleneck blocks, [3, 4, 6, 3], expansion 4), without the classifier.

x → Normalize → stem → 4 stages (stage s has ``width·2^s`` channels, ×4 at the bottleneck's output; the first block
of stages 2-4 halves the resolution) → global average pooling → features (``feat_dim`` = 8·width for ResNet-18,
32·width for ResNet-50: 512 / 2048 at the standard width 64).

Two stems: ``cifar`` (3×3 conv stride 1, no max-pool: a 32-px image keeps 32×32 into the first stage) and
``imagenet`` (7×7 conv stride 2 + 3×3 max-pool stride 2: a 224-px image reaches the first stage at 56×56).
:func:`resolve_stem` turns the config's ``auto`` into one of them from the image side (cifar up to
:data:`CIFAR_STEM_MAX` px). The bottleneck strides its 3×3 conv (torchvision's "ResNet v1.5"); at width 64 with 3
input channels ResNet-50 has torchvision's ``resnet50`` parameters less its fc layer, 23,508,032.
``zero_init_residual`` zeroes the last BatchNorm's γ of every block, so each block starts as the identity (Goyal et
al. 2017; SimCLR / BYOL / MoCo use it).
"""
from __future__ import annotations

import torch
from torch import nn

from .normalize import InputNorm, Normalize

CIFAR_STEM_MAX = 64  # image side (px) up to which ``stem: auto`` picks the CIFAR stem
STEMS = ("cifar", "imagenet")


def resolve_stem(stem: str, image_size: int | None) -> str:
    """``cifar`` or ``imagenet``: ``stem`` itself, or for ``auto`` the CIFAR stem when the image side is at most
    :data:`CIFAR_STEM_MAX` px (or unknown), the ImageNet stem above."""
    if stem == "auto":
        return "cifar" if image_size is None or image_size <= CIFAR_STEM_MAX else "imagenet"
    if stem not in STEMS:
        raise ValueError(f"unknown ResNet stem {stem!r} (choose auto, cifar or imagenet)")
    return stem


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN (ReLU between), identity or 1×1 conv-BN projection shortcut, ReLU after the sum."""
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 conv-BN-ReLU to ``planes``, 3×3 conv-BN-ReLU (strided), 1×1 conv-BN to ``4·planes``; projection shortcut
    where the shape changes; ReLU after the sum."""
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet body: ``block`` repeated ``depths[s]`` times in stage s, global average pooling, no classifier.

    Parameter names (``stem``, ``layers`` — one flat Sequential of blocks —, ``pool``) are those of the original
    CIFAR ResNet-18 of this package, so its checkpoints load unchanged.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths, in_channels: int = 3, width: int = 64,
                 stem: str = "cifar", zero_init_residual: bool = False, norm: InputNorm = InputNorm()):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown ResNet stem {stem!r} (choose cifar or imagenet; resolve auto first)")
        self.normalize = Normalize(norm.mean, norm.std)
        self.stem_kind = stem
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks = []
        cin = width
        for i, depth in enumerate(depths):
            planes = width * 2 ** i
            for j in range(depth):
                blocks.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = cin
        if zero_init_residual:
            for b in self.layers:
                nn.init.zeros_(b.last_bn.weight)

    def forward(self, x):
        return torch.flatten(self.pool(self.layers(self.stem(self.normalize(x)))), 1)


class ResNet18(ResNet):
    """ResNet-18: basic blocks [2, 2, 2, 2]; the CIFAR stem unless ``stem="imagenet"``."""

    def __init__(self, in_channels: int = 3, width: int = 64, stem: str = "cifar", zero_init_residual: bool = False,
                 norm: InputNorm = InputNorm()):
        super().__init__(BasicBlock, (2, 2, 2, 2), in_channels, width, stem, zero_init_residual, norm)


class ResNet50(ResNet):
    """ResNet-50: bottleneck blocks [3, 4, 6, 3] (expansion 4); the CIFAR stem unless ``stem="imagenet"``."""

    def __init__(self, in_channels: int = 3, width: int = 64, stem: str = "cifar", zero_init_residual: bool = False,
                 norm: InputNorm = InputNorm()):
        super().__init__(Bottleneck, (3, 4, 6, 3), in_channels, width, stem, zero_init_residual, norm)
