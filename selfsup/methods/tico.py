"""TiCo (Zhu et al. 2022): transformation invariance + covariance contrast, with C a running covariance of past
embeddings:

C ← β·C + (1 − β)·ẑ¹ᵀẑ¹/N,  loss = −mean_i ẑ¹_i·ẑ²_i + ρ·mean_i ẑ¹_i C ẑ¹_iᵀ

(ẑ l2-normalised; C updated without gradient from the current batch before it is used, as in the authors' code; the
batch statistics are over the global batch under DDP). β = 0.9, ρ = 20 (the paper's CIFAR setting; 8 on ImageNet).

ẑ¹ is the online encoder's projection of the first view, ẑ² the momentum encoder's projection of the second view,
without gradient; θ_m ← m·θ_m + (1 − m)·θ after each step, m from ``base_momentum`` (0.99) to 1 on a cosine schedule,
BYOL's asymmetric views: as lightly's benchmark (benchmarks/imagenet/resnet50/tico.py:30-31 the momentum copies,
:50-57 the schedule, :62-68 the loss of the online first view against the momentum second view; its TiCoTransform
is BYOLTransform, lightly/transforms/tico_transform.py:8)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from torch import nn

from ..distributed import gather
from ..models.heads import projection_head
from .base import MethodParams, SSLMethod, cosine_momentum, ema_update, frozen_copy, upcast


def tico_loss(z1: torch.Tensor, z2: torch.Tensor, cov: torch.Tensor, beta: float, rho: float):
    """(loss, updated C). ``cov`` is the running C (D×D); the returned one carries no gradient; ``z2`` neither."""
    z1, z2 = F.normalize(upcast(z1), dim=1), F.normalize(upcast(z2.detach()), dim=1)
    g1 = gather(z1)
    new_cov = beta * cov + (1 - beta) * (g1.T @ g1).detach() / len(g1)
    invariance = -(z1 * z2).sum(1).mean()
    contrast = rho * ((z1 @ new_cov) * z1).sum(1).mean()
    return invariance + contrast, new_cov


class TiCoParams(MethodParams):
    proj_hidden: int = 1024
    proj_dim: int = 256
    beta: float = Field(0.9, ge=0, lt=1, description="momentum of the running covariance C")
    rho: float = Field(20.0, ge=0, description="weight of the covariance contrast term")
    base_momentum: float = Field(0.99, ge=0, le=1, description="momentum encoder's EMA momentum at step 0 (cosine "
                                                               "schedule to 1)")


class TiCo(SSLMethod):
    name = "tico"
    recipe = "asymmetric"
    Params = TiCoParams
    pure_forward = False  # forward updates the running covariance

    def __init__(self, backbone, params: TiCoParams):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim)
        self.momentum_encoder = frozen_copy(nn.Sequential(self.backbone, self.projector))
        self.register_buffer("cov", torch.zeros(params.proj_dim, params.proj_dim))

    def forward(self, views):
        x1, x2 = views
        z1 = self.projector(self.backbone(x1))
        with torch.no_grad():
            z2 = self.momentum_encoder(x2)
        loss, cov = tico_loss(z1, z2, self.cov, self.params.beta, self.params.rho)
        if self.training:
            self.cov.copy_(cov)
        return loss

    @torch.no_grad()
    def on_step(self, progress):
        ema_update(self.momentum_encoder, nn.Sequential(self.backbone, self.projector),
                   cosine_momentum(self.params.base_momentum, progress))
