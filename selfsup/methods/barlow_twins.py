"""Barlow Twins (Zbontar et al. 2021): standardise z¹, z² over the (global) batch; C = z¹ᵀz²/N;
loss = Σ_i (1 − C_ii)² + λ·Σ_{i≠j} C_ij²."""
from __future__ import annotations

import torch

from ..distributed import gather
from ..models.heads import projection_head
from .base import MethodParams, SSLMethod, upcast


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float, eps: float = 1e-5) -> torch.Tensor:
    z1, z2 = gather(upcast(z1)), gather(upcast(z2))
    n = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / (z1.std(0, unbiased=False) + eps)
    z2 = (z2 - z2.mean(0)) / (z2.std(0, unbiased=False) + eps)
    c = z1.T @ z2 / n
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambda_offdiag * off_diag


class BarlowTwinsParams(MethodParams):
    proj_hidden: int = 1024
    proj_dim: int = 1024
    lambda_offdiag: float = 0.0051


class BarlowTwins(SSLMethod):
    name = "barlow_twins"
    Params = BarlowTwinsParams

    def __init__(self, backbone, params: BarlowTwinsParams):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim, layers=3)

    def forward(self, views):
        z1, z2 = self.encode_joint(views, self.projector)
        return barlow_twins_loss(z1, z2, self.params.lambda_offdiag)
