"""Projection / prediction heads as composable blocks, lightly-style: a list of
``(in_dim, out_dim, batch_norm, activation)`` tuples, optionally with a fifth entry ``affine`` (the BatchNorm's
learned scale and shift; default true)."""
from __future__ import annotations

from torch import nn


class MLPHead(nn.Sequential):
    def __init__(self, blocks: list[tuple]):
        layers: list[nn.Module] = []
        for din, dout, bn, act, *affine in blocks:
            layers.append(nn.Linear(din, dout, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm1d(dout, affine=affine[0] if affine else True))
            if act:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def projection_head(in_dim: int, hidden: int, out: int, layers: int = 2, last_bn: bool = False,
                    last_affine: bool = True) -> MLPHead:
    """``layers``-deep MLP: Linear-BN-ReLU blocks then a Linear (optionally followed by BN, as in SimSiam; without
    its learned scale and shift when ``last_affine`` is false, as MoCo v3)."""
    blocks = []
    d = in_dim
    for _ in range(layers - 1):
        blocks.append((d, hidden, True, True))
        d = hidden
    blocks.append((d, out, last_bn, False, last_affine))
    return MLPHead(blocks)


def prediction_head(dim: int, hidden: int, last_bn: bool = False, last_affine: bool = True) -> MLPHead:
    """BYOL / SimSiam predictor: Linear-BN-ReLU-Linear (optionally followed by BN, as MoCo v3's ViT predictor)."""
    return MLPHead([(dim, hidden, True, True), (hidden, dim, last_bn, False, last_affine)])
