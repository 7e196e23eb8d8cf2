"""VICReg (Bardes et al. 2022): λ·MSE(z¹, z²) + μ·[v(z¹) + v(z²)]/2 + ν·[c(z¹) + c(z²)] with
v(z) = mean_j max(0, 1 − sqrt(Var(z_:,j) + ε)) and c(z) = (1/D)·Σ_{i≠j} Cov(z)_ij² (statistics over the global batch).
The variance terms are averaged (/2) as in the authors' code (facebookresearch/vicreg main_vicreg.py), whose
coefficients λ = μ = 25, ν = 1 are the defaults; the paper's equation sums them (twice the weight), and both sum the
covariance terms."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather
from ..models.heads import projection_head
from .base import MethodParams, SSLMethod, upcast


def variance_term(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    return F.relu(1 - torch.sqrt(z.var(0) + eps)).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    z = z - z.mean(0)
    cov = z.T @ z / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


def vicreg_terms(z1, z2) -> dict[str, torch.Tensor]:
    """The three terms separately (unweighted): invariance, variance (mean of the two views'), covariance (sum)."""
    inv = F.mse_loss(upcast(z1), upcast(z2))
    g1, g2 = gather(upcast(z1)), gather(upcast(z2))
    return {"invariance": inv, "variance": (variance_term(g1) + variance_term(g2)) / 2,
            "covariance": covariance_term(g1) + covariance_term(g2)}


def vicreg_loss(z1, z2, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0) -> torch.Tensor:
    t = vicreg_terms(z1, z2)
    return sim_coeff * t["invariance"] + std_coeff * t["variance"] + cov_coeff * t["covariance"]


class VICRegParams(MethodParams):
    proj_hidden: int = 1024
    proj_dim: int = 1024
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0


class VICReg(SSLMethod):
    name = "vicreg"
    Params = VICRegParams

    def __init__(self, backbone, params: VICRegParams):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim, layers=3)

    def forward(self, views):
        z1, z2 = self.encode_joint(views, self.projector)
        p = self.params
        return vicreg_loss(z1, z2, p.sim_coeff, p.std_coeff, p.cov_coeff)
