"""Projection / prediction heads as composable blocks, lightly-style: a list of
``(in_dim, out_dim, batch_norm, activation)`` tuples."""
from __future__ import annotations

from torch import nn


class MLPHead(nn.Sequential):
    def __init__(self, blocks: list[tuple[int, int, bool, bool]]):
        layers: list[nn.Module] = []
        for din, dout, bn, act in blocks:
            layers.append(nn.Linear(din, dout, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm1d(dout))
            if act:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def projection_head(in_dim: int, hidden: int, out: int, layers: int = 2, last_bn: bool = False) -> MLPHead:
    """``layers``-deep MLP: Linear-BN-ReLU blocks then a Linear (optionally followed by BN, as in SimSiam)."""
    blocks = []
    d = in_dim
    for _ in range(layers - 1):
        blocks.append((d, hidden, True, True))
        d = hidden
    blocks.append((d, out, last_bn, False))
    return MLPHead(blocks)


def prediction_head(dim: int, hidden: int) -> MLPHead:
    """BYOL / SimSiam predictor: Linear-BN-ReLU-Linear."""
    return MLPHead([(dim, hidden, True, True), (hidden, dim, False, False)])
