"""MMCR (Yerxa et al. 2023): maximum manifold capacity representations. Every image i has k views; ẑ_iv the
l2-normalised projections, Z_i (k×d) one image's, c_i its centroid; C (N×d) the centroids of the global batch:

loss = −‖C‖_* + λ·mean_i ‖Z_i‖_*   (‖·‖_*: the nuclear norm, the sum of the singular values)

Maximising ‖C‖_* spreads the centroids over many directions; the per-image term (λ, 0 in the authors' scripts,
5·10⁻³ in lightly's MMCRLoss) shrinks each image's manifold. With the momentum encoder (``momentum_encoder``, the
EMA of backbone + projector, θ_m ← m·θ_m + (1 − m)·θ, m from ``base_momentum`` to 1 on a cosine schedule; the
authors' ImageNet setting) both networks see every view and c_i = ½(mean_v ẑ_iv + mean_v ẑᵐ_iv), the per-image term
over the online views (ThomasYerxa/mmcr mmcr/imagenet/loss_mmcr_momentum.py:22-71); without it c_i = mean_v ẑ_iv
(mmcr/cifar_stl/loss_mmcr.py:19-46). lightly's MMCRLoss (mmcr_loss.py:62-73) takes the same centroids but its
per-image term over the online and momentum views together, and does not normalise.

Views: the two of the recipe, plus ``augment.local_crops`` smaller crops as further views (multi-crop; the paper
uses k same-size views). Under DDP the centroids are gathered with their gradients (the authors' gather passes
none from other ranks, so their gradient is 1/world of this one)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..distributed import gather
from ..models.heads import projection_head
from .base import MethodParams, SSLMethod, cosine_momentum, ema_update, frozen_copy, resolution_groups, upcast


def mmcr_loss(z: torch.Tensor, z_m: torch.Tensor | None, lmbda: float) -> torch.Tensor:
    """−‖C‖_* + λ·mean_i ‖Z_i‖_* for ``z`` (N, k, d) this rank's online projections, ``z_m`` (N, k, d) the momentum
    encoder's (no gradient) or None; C is gathered over ranks, the per-image mean is this rank's."""
    z = F.normalize(upcast(z), dim=-1)
    c = z.mean(1)
    if z_m is not None:
        c = 0.5 * (c + F.normalize(upcast(z_m.detach()), dim=-1).mean(1))
    loss = -torch.linalg.svdvals(gather(c)).sum()
    if lmbda > 0:
        loss = loss + lmbda * torch.linalg.svdvals(z).sum(1).mean()
    return loss


class MMCRParams(MethodParams):
    proj_hidden: int = Field(512, gt=0, description="hidden width of the 2-layer projector (the paper: 8192)")
    proj_dim: int = Field(128, gt=0, description="projection width d (the paper: 512)")
    lmbda: float = Field(0.005, ge=0, description="λ of the per-image nuclear norms (lightly's 5e-3; the authors' "
                                                  "scripts: 0)")
    momentum_encoder: bool = Field(True, description="an EMA encoder also embeds every view; the centroids average "
                                                     "both networks (the authors' ImageNet setting)")
    base_momentum: float = Field(0.99, ge=0, le=1, description="EMA momentum at step 0 (cosine schedule to 1; the "
                                                               "authors: 0.99 throughout)")


class MMCR(SSLMethod):
    name = "mmcr"
    Params = MMCRParams
    multi_crop = True

    def __init__(self, backbone, params: MMCRParams):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim)
        self.target = frozen_copy(nn.Sequential(self.backbone, self.projector)) if params.momentum_encoder else None

    @torch.no_grad()
    def momentum_views(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """The momentum encoder's projections of every view, batched as :meth:`encode_joint` batches the online
        ones (the backbone once per resolution, the head once over all views)."""
        backbone, head = self.target
        order = [i for g in resolution_groups(views) for i in g]
        feats = torch.cat([backbone(torch.cat([views[i] for i in g])) for g in resolution_groups(views)])
        out: list[torch.Tensor] = [None] * len(views)  # type: ignore[list-item]
        for i, z in zip(order, head(feats).split([len(views[i]) for i in order])):
            out[i] = z
        return out

    def forward(self, views):
        z = torch.stack(self.encode_joint(views, self.projector), 1)  # (N, k, d)
        z_m = torch.stack(self.momentum_views(views), 1) if self.target is not None else None
        return mmcr_loss(z, z_m, self.params.lmbda)

    @torch.no_grad()
    def on_step(self, progress):
        if self.target is not None:
            ema_update(self.target, nn.Sequential(self.backbone, self.projector),
                       cosine_momentum(self.params.base_momentum, progress))
