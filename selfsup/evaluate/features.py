"""Frozen features of a backbone: an inference copy (eval mode, Conv→BatchNorm folded) and batched extraction.

Protocol: features come from the backbone in eval mode (BatchNorm running statistics), no augmentation.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..data import image_batches


def inference_copy(backbone: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy with every Conv2d→BatchNorm2d pair folded into one convolution (same outputs, fewer
    memory passes) and weights in channels_last when asked."""
    m = copy.deepcopy(backbone).eval()
    for mod in m.modules():
        children = list(mod.named_children())
        for (n1, c1), (n2, c2) in zip(children, children[1:]):
            if isinstance(c1, nn.Conv2d) and isinstance(c2, nn.BatchNorm2d) and c2.track_running_stats:
                setattr(mod, n1, fuse_conv_bn_eval(c1, c2))
                setattr(mod, n2, nn.Identity())
    return m.to(memory_format=torch.channels_last) if channels_last else m


@torch.inference_mode()
def extract_features(backbone: nn.Module, images: torch.Tensor, batch_size: int = 256,
                     device: str | torch.device = "cpu", channels_last: bool = True, workers: int = 0
                     ) -> torch.Tensor:
    """Backbone features (eval mode: BatchNorm running statistics, no augmentation) of uint8 images (0..255) or
    float images in [0, 1], used as they are (no quantisation). A lazy image set is decoded batch by batch, in
    ``workers`` DataLoader processes when workers > 0 (:func:`selfsup.data.image_batches`)."""
    model = inference_copy(backbone, channels_last).to(device)
    out = []
    for x in image_batches(images, batch_size, workers):
        x = x.to(device)
        x = x.float() if x.is_floating_point() else x.float().div_(255)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x).float().cpu())
    return torch.cat(out)
