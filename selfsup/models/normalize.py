"""Input normalisation inside every backbone, so that attacks and evaluation always work on [0, 1] images."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class InputNorm:
    """The constants a backbone normalises its [0, 1] input with: (x − mean) / std."""
    mean: float = 0.5
    std: float = 0.25


class Normalize(nn.Module):
    def __init__(self, mean: float = 0.5, std: float = 0.25):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
