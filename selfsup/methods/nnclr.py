"""NNCLR (Dwibedi et al. 2021): the positive of a view is the nearest neighbour of its projection in a FIFO support
queue of past projections,

ℓ_i = −log( exp(NN(ẑ¹_i)·p̂²_i/τ) / Σ_k exp(NN(ẑ¹_i)·p̂²_k/τ) ),  symmetrised over the two views,

with p = predictor(z). The queue holds the view-1 projections of past batches (gathered from every rank under DDP);
until it has entries a view is its own neighbour. Queue and fill count are buffers, so they are in the checkpoint."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..distributed import gather, rank
from ..models.heads import prediction_head, projection_head
from .base import MethodParams, SSLMethod, upcast


def nearest_support(z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """For each l2-normalised row of ``z``, the most cosine-similar row of ``support`` (no gradient: the positive
    is a fixed target, as in the paper)."""
    with torch.no_grad():
        idx = (F.normalize(z, dim=1) @ support.T).argmax(1)
    return support[idx]


def nnclr_ctr(nn_z: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """CE over the global batch: the local neighbour i's positive is prediction rank·n + i."""
    nn_z = F.normalize(nn_z, dim=1)
    p_all = F.normalize(gather(upcast(p)), dim=1)
    targets = torch.arange(len(nn_z), device=nn_z.device) + rank() * len(nn_z)
    return F.cross_entropy(nn_z @ p_all.T / temperature, targets)


class NNCLRParams(MethodParams):
    proj_hidden: int = 1024
    proj_dim: int = 256
    pred_hidden: int = Field(1024, gt=0, description="predictor hidden width")
    temperature: float = Field(0.1, gt=0, description="τ of the cosine logits")
    queue_size: int = Field(8192, gt=0, description="support-set size (98 304 on ImageNet; scale to the data)")


class NNCLR(SSLMethod):
    name = "nnclr"
    Params = NNCLRParams
    pure_forward = False  # forward updates the support queue

    def __init__(self, backbone, params: NNCLRParams):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim)
        self.predictor = prediction_head(params.proj_dim, params.pred_hidden)
        self.register_buffer("queue", torch.zeros(params.queue_size, params.proj_dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    def _support(self, z: torch.Tensor) -> torch.Tensor:
        filled = int(self.queue_filled)
        return self.queue[:filled] if filled else F.normalize(z.detach(), dim=1)

    @torch.no_grad()
    def _enqueue(self, z: torch.Tensor) -> None:
        z = F.normalize(gather(z), dim=1)[-len(self.queue):]
        idx = (self.queue_ptr + torch.arange(len(z), device=z.device)) % len(self.queue)
        self.queue[idx] = z
        self.queue_ptr.copy_((self.queue_ptr + len(z)) % len(self.queue))
        self.queue_filled.copy_(torch.clamp(self.queue_filled + len(z), max=len(self.queue)))

    def forward(self, views):
        z1, z2 = [upcast(z) for z in self.encode_joint(views, self.projector)]
        p1, p2 = self.predictor(z1), self.predictor(z2)
        t = self.params.temperature
        loss = 0.5 * (nnclr_ctr(nearest_support(z1, self._support(z1)), p2, t)
                      + nnclr_ctr(nearest_support(z2, self._support(z2)), p1, t))
        if self.training:
            self._enqueue(z1.detach())
        return loss
