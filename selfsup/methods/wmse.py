"""W-MSE (Ermolov et al. 2021): whiten the embeddings, then pull positives together on the sphere.

For each view v, split the batch into sub-batches of ``w_size`` images (a random permutation, ``w_iter`` times);
whiten each sub-batch, ẑ = L⁻¹(z − μ) with L Lᵀ = Cov(z) + ε·I (Cholesky), so the whitened sub-batch has identity
covariance; loss = mean over pairs of views and iterations of 2 − 2·cos(ẑ¹_i, ẑ²_i). Whitening needs
``w_size`` > ``proj_dim``. Under DDP the sub-batches are drawn from the global batch (gathered), so the loss equals
one process with the same global batch; the permutations come from a step counter in the state dict (exact resume).
As the authors' code (htdt/self-supervised, methods/w_mse.py:21-22), the backbone runs on each view on its own
(BatchNorm's batch is one view) and the projector on both views together."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..distributed import gather
from ..models.heads import projection_head
from .base import MethodParams, SSLMethod, upcast


def whiten(z: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """L⁻¹(z − μ)ᵀ transposed back: rows whitened so that Cov = I (Cholesky of the covariance, shrunk by ``eps``
    towards I as (1 − eps)·Cov + eps·I)."""
    zc = z - z.mean(0)
    cov = zc.T @ zc / (len(z) - 1)
    cov = (1 - eps) * cov + eps * torch.eye(z.shape[1], device=z.device, dtype=z.dtype)
    chol = torch.linalg.cholesky(cov)
    return torch.linalg.solve_triangular(chol, zc.T, upper=False).T


def wmse_loss(z1: torch.Tensor, z2: torch.Tensor, w_size: int, w_iter: int, generator: torch.Generator,
              eps: float = 0.0) -> torch.Tensor:
    """W-MSE of the global batch (rows of z1 and z2 are positive pairs)."""
    z1, z2 = gather(upcast(z1)), gather(upcast(z2))
    n = len(z1)
    w_size = min(w_size, n)
    loss = z1.new_zeros(())
    for _ in range(w_iter):
        perm = torch.randperm(n, generator=generator).to(z1.device)
        for idx in perm[: n - n % w_size].view(-1, w_size):
            w1, w2 = whiten(z1[idx], eps), whiten(z2[idx], eps)
            loss = loss + (2 - 2 * F.cosine_similarity(w1, w2, dim=1)).mean()
    return loss / (w_iter * (n // w_size))


class WMSEParams(MethodParams):
    proj_hidden: int = 1024
    proj_dim: int = 64
    w_size: int = Field(128, gt=1, description="whitening sub-batch size (must exceed proj_dim)")
    w_iter: int = Field(1, ge=1, description="whitening iterations (random sub-batch splits) per step")
    w_eps: float = Field(0.0, ge=0, lt=1, description="shrinkage of the covariance towards I before Cholesky")


class WMSE(SSLMethod):
    name = "wmse"
    Params = WMSEParams

    @classmethod
    def check_batch(cls, params: WMSEParams, global_batch: int) -> str | None:
        if params.w_size <= params.proj_dim:
            return f"method.w_size ({params.w_size}) must exceed method.proj_dim ({params.proj_dim}) to whiten"
        if global_batch < params.w_size:
            return f"train.batch_size ({global_batch}) is smaller than method.w_size ({params.w_size})"
        return None

    def __init__(self, backbone, params: WMSEParams):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim)
        self.register_buffer("whiten_step", torch.zeros((), dtype=torch.long))

    def forward(self, views):
        z1, z2 = self.projector(torch.cat([self.backbone(v) for v in views])).chunk(2)
        g = torch.Generator().manual_seed(int(self.whiten_step))
        if self.training:
            self.whiten_step += 1
        p = self.params
        return wmse_loss(z1, z2, p.w_size, p.w_iter, g, p.w_eps)
