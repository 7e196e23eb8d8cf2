"""MoCo v3 (Chen et al. 2021): q = predictor(projector(f(x))), k = the momentum encoder's projection of the other
view, InfoNCE over the batch (the other images' keys are the negatives; no queue), symmetrised:

loss = ctr(q¹, k²) + ctr(q², k¹),  ctr(q, k) = 2τ · CE(q̂·k̂ᵀ/τ, diagonal)

θ_k ← m·θ_k + (1 − m)·θ_q with m from ``base_momentum`` to 1 on a cosine schedule. Under DDP the keys are gathered
from every rank and each query's positive is its own key in the global batch.

As the authors' code (facebookresearch/moco-v3, moco/builder.py): each view goes through the encoder on its own, so
BatchNorm's batch is one view (:86-87 online, :93-94 momentum); the projector ends in a BatchNorm without learned
scale and shift (:47-50, ``affine=False``); the predictor, Linear-BN-ReLU-Linear, ends in such a BatchNorm too on a
ViT (:122) but not on a ResNet/CNN (:109). Kept from before: a 3-layer projector on every backbone (the code's
ResNet projector has 2 layers, :105; the paper says 3) and a bias in the predictor's last Linear when no BN follows."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..distributed import gather, rank
from ..models.heads import prediction_head, projection_head
from ..models.vit import ViT
from .base import MethodParams, SSLMethod, cosine_momentum, ema_update, frozen_copy, upcast


def moco_v3_ctr(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """2τ · CE(q̂·k̂ᵀ/τ) with the positive of local query i at global key rank·n + i; keys carry no gradient."""
    q = F.normalize(upcast(q), dim=1)
    k = F.normalize(gather(upcast(k.detach())), dim=1)
    targets = torch.arange(len(q), device=q.device) + rank() * len(q)
    return 2 * temperature * F.cross_entropy(q @ k.T / temperature, targets)


class MoCoV3Params(MethodParams):
    proj_hidden: int = 1024
    proj_dim: int = 256
    pred_hidden: int = Field(1024, gt=0, description="predictor hidden width")
    temperature: float = Field(0.2, gt=0, description="τ (0.2 for ViT; the paper uses 1.0 for ResNets at scale)")
    base_momentum: float = Field(0.99, ge=0, le=1, description="momentum at step 0 (cosine schedule to 1)")


class MoCoV3(SSLMethod):
    name = "moco_v3"
    recipe = "asymmetric"
    Params = MoCoV3Params

    def __init__(self, backbone, params: MoCoV3Params):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim, layers=3,
                                         last_bn=True, last_affine=False)
        self.predictor = prediction_head(params.proj_dim, params.pred_hidden, last_bn=isinstance(backbone, ViT),
                                         last_affine=False)
        self.momentum_encoder = frozen_copy(nn.Sequential(self.backbone, self.projector))

    def forward(self, views):
        x1, x2 = views
        q1, q2 = (self.predictor(self.projector(self.backbone(x))) for x in views)  # BatchNorm per view
        with torch.no_grad():
            k1, k2 = self.momentum_encoder(x1), self.momentum_encoder(x2)
        t = self.params.temperature
        return moco_v3_ctr(q1, k2, t) + moco_v3_ctr(q2, k1, t)

    @torch.no_grad()
    def on_step(self, progress):
        ema_update(self.momentum_encoder, nn.Sequential(self.backbone, self.projector),
                   cosine_momentum(self.params.base_momentum, progress))
