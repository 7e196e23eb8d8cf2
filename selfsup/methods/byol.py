"""BYOL (Grill et al. 2020): online encoder + projector + predictor q, target = EMA of encoder + projector with
τ from ``base_momentum`` to 1 on a cosine schedule.
loss = Σ over both view orders of 2 − 2·cos(q(z_online), sg(z_target))."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.heads import prediction_head, projection_head
from .base import MethodParams, SSLMethod, cosine_momentum, ema_update, frozen_copy, upcast


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 − 2·cos(p, sg(z)), averaged over the batch."""
    return 2 - 2 * F.cosine_similarity(upcast(p), upcast(z.detach()), dim=1).mean()


class BYOLParams(MethodParams):
    pred_hidden: int = 512
    base_momentum: float = 0.99


class BYOL(SSLMethod):
    name = "byol"
    recipe = "asymmetric"
    Params = BYOLParams

    def __init__(self, backbone, params: BYOLParams):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim)
        self.predictor = prediction_head(params.proj_dim, params.pred_hidden)
        self.target = frozen_copy(nn.Sequential(self.backbone, self.projector))

    def forward(self, views):
        x1, x2 = views
        p1 = self.predictor(self.projector(self.backbone(x1)))
        p2 = self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            t1, t2 = self.target(x1), self.target(x2)
        return byol_loss(p1, t2) + byol_loss(p2, t1)

    @torch.no_grad()
    def on_step(self, progress):
        ema_update(self.target, nn.Sequential(self.backbone, self.projector),
                   cosine_momentum(self.params.base_momentum, progress))
