"""Backbones: a CPU-efficient small CNN (default), ResNet-18 / ResNet-50 (:mod:`.resnet`, CIFAR or ImageNet stem)
and a small ViT (:mod:`.vit`).

Every backbone maps a float image batch ``(N, C, H, W)`` in [0, 1] to features ``(N, feat_dim)`` and exposes
``feat_dim``. Input normalisation lives inside the backbone (``mean``/``std`` buffers) so that attacks and
evaluation always work on [0, 1] images.
"""
from __future__ import annotations

import torch
from torch import nn

from .normalize import InputNorm, Normalize
from .resnet import BasicBlock, Bottleneck, ResNet, ResNet18, ResNet50, resolve_stem
from .vit import ViT, ViTSpec

__all__ = ["SmallCNN", "build_backbone", "conv_bn_relu", "BasicBlock", "Bottleneck", "InputNorm", "ResNet",
           "ResNet18", "ResNet50", "resolve_stem", "ViT", "ViTSpec"]


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
    coarse spatial layout is what lets a small CNN beat raw pixels on 28x28 images. ``stem="imagenet"`` gives the
    first conv stride 2 (for large images: the first stage's activations, the bulk of the memory and FLOPs, shrink
    4x).
    """

    def __init__(self, in_channels: int = 1, widths=(32, 64, 128), convs_per_stage: int = 2, pool: int = 2,
                 downsample: str = "max", stem: str = "cifar", norm: InputNorm = InputNorm()):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"unknown CNN stem {stem!r} (choose cifar or imagenet; resolve auto first)")
        self.normalize = Normalize(norm.mean, norm.std)
        self.stem_kind = stem
        layers: list[nn.Module] = []
        cin = in_channels
        for s, w in enumerate(widths):
            if s > 0:
                layers.append(nn.MaxPool2d(2) if downsample == "max" else nn.AvgPool2d(2))
            for c in range(convs_per_stage):
                # imagenet stem: the first conv has stride 2, so the first stage works at half the image side
                layers.append(conv_bn_relu(cin, w, stride=2 if stem == "imagenet" and s == 0 and c == 0 else 1))
                cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.feat_dim = cin * pool * pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(self.normalize(x))), 1)


def build_backbone(name: str, in_channels: int, **kwargs) -> nn.Module:
    """The backbone ``name`` for ``in_channels``-channel images; ``kwargs``: its constructor's (for ``vit``: the
    fields of :class:`ViTSpec`), as ``backbone.json`` records them."""
    if name == "cnn":
        return SmallCNN(in_channels=in_channels, **kwargs)
    if name == "resnet18":
        return ResNet18(in_channels=in_channels, **kwargs)
    if name == "resnet50":
        return ResNet50(in_channels=in_channels, **kwargs)
    if name == "vit":
        return ViT(in_channels=in_channels, spec=ViTSpec(**kwargs))
    raise ValueError(f"unknown backbone {name!r} (choose cnn, resnet18, resnet50 or vit)")
