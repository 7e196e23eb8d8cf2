"""SimSiam (Chen & He 2021): loss = −½·cos(p¹, sg(z²)) − ½·cos(p², sg(z¹)), no target network."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.heads import prediction_head, projection_head
from .base import MethodParams, SSLMethod, upcast


def simsiam_loss(p1, z2, p2, z1) -> torch.Tensor:
    cos = lambda p, z: F.cosine_similarity(upcast(p), upcast(z.detach()), dim=1).mean()  # noqa: E731
    return -0.5 * cos(p1, z2) - 0.5 * cos(p2, z1)


class SimSiamParams(MethodParams):
    proj_dim: int = 256
    pred_hidden: int = 64


class SimSiam(SSLMethod):
    name = "simsiam"
    Params = SimSiamParams

    def __init__(self, backbone, params: SimSiamParams):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim, layers=3, last_bn=True)
        self.predictor = prediction_head(params.proj_dim, params.pred_hidden)

    def forward(self, views):
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        return simsiam_loss(self.predictor(z1), z2, self.predictor(z2), z1)
