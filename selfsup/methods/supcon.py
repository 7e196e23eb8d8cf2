"""SupCon (Khosla et al. 2020), the L_out form, for labelled data:

ℓ_i = −1/|P(i)| · Σ_{p∈P(i)} log( exp(ẑ_i·ẑ_p/τ) / Σ_{a≠i} exp(ẑ_i·ẑ_a/τ) ),  loss = mean over the 2N anchors,

P(i) = the other views (of any image) with i's label. With all labels distinct P(i) is i's other view and this is
NT-Xent. Under DDP the candidates (and their labels) are every rank's views."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..distributed import gather, rank
from ..models.heads import projection_head
from .base import MethodParams, SSLMethod, upcast


def supcon_loss(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_out over the local anchors [z1; z2] against every rank's views; ``labels`` are this rank's (n,)."""
    z1, z2 = F.normalize(upcast(z1), dim=1), F.normalize(upcast(z2), dim=1)
    n = len(z1)
    candidates = torch.cat([gather(z1), gather(z2)])  # (2N, D)
    y_all = gather(labels)
    y_cand = torch.cat([y_all, y_all])
    anchors, y_anchor = torch.cat([z1, z2]), torch.cat([labels, labels])
    logits = anchors @ candidates.T / temperature  # (2n, 2N)
    big_n = len(y_all)
    local = torch.arange(n, device=z1.device) + rank() * n
    self_idx = torch.cat([local, big_n + local])
    rows = torch.arange(2 * n, device=z1.device)
    not_self = torch.ones_like(logits, dtype=torch.bool)
    not_self[rows, self_idx] = False
    log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), 1, keepdim=True)
    positives = (y_anchor[:, None] == y_cand[None, :]) & not_self
    return -((log_prob * positives).sum(1) / positives.sum(1)).mean()


class SupConParams(MethodParams):
    temperature: float = Field(0.1, gt=0, description="τ of the cosine logits")


class SupCon(SSLMethod):
    name = "supcon"
    Params = SupConParams
    uses_labels = True  # the trainer passes each image's label

    def __init__(self, backbone, params: SupConParams):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim)

    def forward(self, views, labels):
        z1, z2 = self.encode_joint(views, self.projector)
        return supcon_loss(z1, z2, labels, self.params.temperature)
