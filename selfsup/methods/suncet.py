"""SuNCEt (Assran et al. 2020): SimCLR's NT-Xent over every image plus a supervised contrastive term over the
labelled ones (label −1 = unlabelled):

ℓ_i = −log( Σ_{j≠i, y_j=y_i} exp(ẑ_i·ẑ_j/τ_s) / Σ_{k≠i} exp(ẑ_i·ẑ_k/τ_s) ),
i, j, k: the labelled views (both views of every labelled image); the positives are summed inside the log
(SupCon's L_out sums their logs outside).
SuNCEt = mean over the classes c of the batch of ( mean of ℓ_i over the views i of class c ),
loss = NT-Xent(τ) + weight · SuNCEt, the second term only during the first ``suncet_until`` share of training.

Under DDP the candidates and labels are every rank's; each rank's loss is world × its anchors' share of the global
per-class means, so the mean over ranks is the global loss. Unlabelled views get no gradient from the SuNCEt term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..distributed import gather, rank, world_size
from ..models.heads import projection_head
from .base import MethodParams, SSLMethod, upcast
from .simclr import SimCLRParams, nt_xent


def suncet_loss(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SuNCEt of the local views [z1; z2] (labels (n,), −1 = unlabelled) against every rank's labelled views."""
    y_all = gather(labels)
    if not (y_all >= 0).any():  # the same on every rank
        return z1.new_zeros(())
    z1, z2 = F.normalize(upcast(z1), dim=1), F.normalize(upcast(z2), dim=1)
    n, big_n = len(z1), len(y_all)
    candidates, y_cand = torch.cat([gather(z1), gather(z2)]), torch.cat([y_all, y_all])  # (2N, D), (2N,)
    local = torch.arange(n, device=z1.device) + rank() * n
    self_idx, y_anchor = torch.cat([local, big_n + local]), torch.cat([labels, labels])
    keep = y_anchor >= 0  # labelled anchors only: unlabelled views take no part
    anchors, self_idx, y_anchor = torch.cat([z1, z2])[keep], self_idx[keep], y_anchor[keep]
    logits = anchors @ candidates.T / temperature  # (a, 2N)
    rows = torch.arange(len(anchors), device=z1.device)
    candidate = (y_cand >= 0)[None, :].expand_as(logits).clone()
    candidate[rows, self_idx] = False
    positive = candidate & (y_anchor[:, None] == y_cand[None, :])
    log_num = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), 1)
    log_den = torch.logsumexp(logits.masked_fill(~candidate, float("-inf")), 1)
    per_view = log_den - log_num
    classes, counts = torch.unique(y_all[y_all >= 0], return_counts=True)  # views per class: 2 × counts
    weight = 1.0 / (len(classes) * 2 * counts[torch.searchsorted(classes, y_anchor)])
    return world_size() * (weight * per_view).sum()


class SuNCEtParams(MethodParams):
    temperature: float = Field(SimCLRParams.model_fields["temperature"].default, gt=0,
                               description="τ of the NT-Xent term (SimCLR's default)")
    suncet_temperature: float = Field(0.1, gt=0, description="τ_s of the supervised SuNCEt term")
    suncet_weight: float = Field(1.0, ge=0, description="weight of the SuNCEt term added to NT-Xent")
    suncet_until: float = Field(1.0, ge=0, le=1, description="share of training after which the SuNCEt term is "
                                                             "switched off (1: never)")


class SuNCEt(SSLMethod):
    name = "suncet"
    Params = SuNCEtParams
    uses_labels = True  # the trainer passes each image's label
    accepts_unlabelled = True  # label −1: unlabelled

    def __init__(self, backbone, params: SuNCEtParams):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim)
        self.register_buffer("suncet_on", torch.tensor(int(params.suncet_until > 0)))  # 1/0, checkpointed

    def forward(self, views, labels):
        z1, z2 = self.encode_joint(views, self.projector)
        loss = nt_xent(z1, z2, self.params.temperature)
        if bool(self.suncet_on) and self.params.suncet_weight:
            loss = loss + self.params.suncet_weight * suncet_loss(z1, z2, labels, self.params.suncet_temperature)
        return loss

    @torch.no_grad()
    def on_step(self, progress: float) -> None:
        self.suncet_on.fill_(int(progress < self.params.suncet_until))
