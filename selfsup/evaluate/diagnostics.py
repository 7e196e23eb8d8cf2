"""Label-free diagnostics of an embedding: RankMe, alignment/uniformity, collapse alarm, linear CKA."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of Z (N×D)."""
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    """E‖ẑ¹ − ẑ²‖^α over positive pairs (Wang & Isola 2020); lower is better."""
    z1, z2 = F.normalize(z1.double(), dim=1), F.normalize(z2.double(), dim=1)
    return float((z1 - z2).norm(dim=1).pow(alpha).mean())


def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """log E exp(−t‖ẑ_i − ẑ_j‖²) over all pairs i≠j; lower is better."""
    z = F.normalize(z.double(), dim=1)
    sq = torch.pdist(z).pow(2)
    return float(torch.log(torch.exp(-t * sq).mean()))


def collapse_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the std over the batch of l2-normalised embeddings: ≈ 1/√D healthy, → 0 collapsed."""
    return float(F.normalize(z.double(), dim=1).std(0).mean())


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) on centred features: ‖YᵀX‖²_F / (‖XᵀX‖_F·‖YᵀY‖_F)."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    num = (y.T @ x).norm().pow(2)
    return float(num / ((x.T @ x).norm() * (y.T @ y).norm()))
