"""SimCLR (Chen et al. 2020): NT-Xent over the 2N views.

ℓ_i = −log( exp(ẑ_i·ẑ_j/τ) / Σ_{k≠i} exp(ẑ_i·ẑ_k/τ) ),  loss = mean over the 2N anchors.
Under DDP the anchors are this rank's views, the candidates all ranks' views (autograd-aware gather).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather, rank
from ..models.heads import projection_head
from .base import MethodParams, SSLMethod, upcast


def contrastive_logits(z1: torch.Tensor, z2: torch.Tensor, temperature: float):
    """Cosine logits of the local anchors [z1; z2] (2n) against every rank's views [Z1; Z2] (2N), with each
    anchor's own column (``self_idx``) and its positive's column (``pos_idx``)."""
    z1 = F.normalize(upcast(z1), dim=1)
    z2 = F.normalize(upcast(z2), dim=1)
    n = z1.shape[0]
    a1, a2 = gather(z1), gather(z2)  # (N, D) each
    big_n = a1.shape[0]
    candidates = torch.cat([a1, a2], 0)  # (2N, D): global view-1 block then view-2 block
    anchors = torch.cat([z1, z2], 0)  # (2n, D)
    logits = anchors @ candidates.T / temperature  # (2n, 2N)
    off = rank() * n
    local = torch.arange(n, device=z1.device)
    self_idx = torch.cat([off + local, big_n + off + local])
    pos_idx = torch.cat([big_n + off + local, off + local])
    return logits, self_idx, pos_idx


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of local anchors ``z1``/``z2`` (n×D, view pairs by row) against the views of every rank."""
    logits, self_idx, pos_idx = contrastive_logits(z1, z2, temperature)
    rows = torch.arange(len(logits), device=logits.device)
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[rows, self_idx] = True
    return F.cross_entropy(logits.masked_fill(mask, float("-inf")), pos_idx)


class SimCLRParams(MethodParams):
    temperature: float = 0.2


class SimCLR(SSLMethod):
    name = "simclr"
    Params = SimCLRParams

    def __init__(self, backbone, params: SimCLRParams):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim)

    def forward(self, views):
        z1, z2 = self.encode_joint(views, self.projector)
        return nt_xent(z1, z2, self.params.temperature)
