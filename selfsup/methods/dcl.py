"""DCL and DCLW (Yeh et al. 2022): NT-Xent with the positive removed from the denominator (decoupled),

ℓ_i = −w_i·ẑ_i·ẑ_j/τ + log Σ_{k∉{i, j}} exp(ẑ_i·ẑ_k/τ),  loss = mean over the 2N anchors,

with w_i = 1 (DCL) or, for DCLW, w_i = 2 − N·softmax_i(ẑ¹_i·ẑ²_i/σ) over the batch (σ = 0.5): easy positives (very
similar pairs) get less weight. Under DDP the negatives are every rank's views and the softmax runs over the global
batch.

DCLW's weights are constants by default (``weight_grad: false``), as lightly's ``negative_mises_fisher_weights``
(lightly/loss/dcl_loss.py:35-38, ``out0.detach()``): w only re-weights each positive's pull. ``weight_grad: true``
lets the gradient through w, as the implementation lightly cites (raminnakhli/Decoupled-Contrastive-Learning,
loss/dcl.py:43, no detach) and selfsup before; it adds −s·∂w/∂s/τ, which pushes the most similar positives apart.
(chingyaoc/DCL is Debiased Contrastive Learning, Chuang et al. 2020, which has no such weighting.)"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..distributed import gather, rank
from ..models.heads import projection_head
from .base import MethodParams, SSLMethod, upcast
from .simclr import contrastive_logits


def dclw_weights(z1: torch.Tensor, z2: torch.Tensor, sigma: float, grad: bool = False) -> torch.Tensor:
    """w = 2 − N·softmax(ẑ¹_i·ẑ²_i/σ) over the global batch, for this rank's pairs (n,); constants unless ``grad``."""
    if not grad:
        z1, z2 = z1.detach(), z2.detach()
    s = (F.normalize(upcast(z1), dim=1) * F.normalize(upcast(z2), dim=1)).sum(1)
    s_all = gather(s)
    w = 2 - len(s_all) * F.softmax(s_all / sigma, dim=0)
    n = len(s)
    return w[rank() * n: rank() * n + n]


def dcl_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float, sigma: float | None = None,
             weight_grad: bool = False) -> torch.Tensor:
    """DCL (``sigma=None``) or DCLW of the local pairs (z1_i, z2_i) against the views of every rank."""
    logits, self_idx, pos_idx = contrastive_logits(z1, z2, temperature)
    rows = torch.arange(len(logits), device=logits.device)
    pos = logits[rows, pos_idx]
    if sigma is not None:
        pos = pos * dclw_weights(z1, z2, sigma, weight_grad).repeat(2)
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[rows, self_idx] = True
    mask[rows, pos_idx] = True
    return (torch.logsumexp(logits.masked_fill(mask, float("-inf")), 1) - pos).mean()


class DCLParams(MethodParams):
    temperature: float = Field(0.1, gt=0, description="τ of the cosine logits")


class DCL(SSLMethod):
    name = "dcl"
    Params = DCLParams

    def __init__(self, backbone, params):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim)

    def forward(self, views):
        z1, z2 = self.encode_joint(views, self.projector)
        p = self.params
        return dcl_loss(z1, z2, p.temperature, getattr(p, "sigma", None), getattr(p, "weight_grad", False))


class DCLWParams(DCLParams):
    sigma: float = Field(0.5, gt=0, description="σ of the von Mises-Fisher weighting of the positives")
    weight_grad: bool = Field(False, description="let the gradient flow through the weights w (as "
                                                 "raminnakhli/Decoupled-Contrastive-Learning); false: w are "
                                                 "constants, as lightly's DCLWLoss")


class DCLW(DCL):
    name = "dclw"
    Params = DCLWParams
