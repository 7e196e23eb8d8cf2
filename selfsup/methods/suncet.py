"""SuNCEt (Assran et al. 2020) as in the authors' code (facebookresearch/suncet): SimCLR's NT-Xent over the
unlabelled batch plus a supervised contrastive term over a separate labelled support batch, one temperature τ.
A view is in the support when its image's label is known (≥ 0), in the unlabelled batch otherwise (−1); with
``data.labelled_per_batch`` the support is the class-balanced labelled part of each batch and the rest of the batch
is drawn from the unlabelled images (selfsup/data/batches.py), as the authors' ClassStratifiedSampler support batch
next to their unsupervised loader (src/suncet_train.py:256-293; src/data_manager.py:351-394).

NT-Xent: i, j, k range over the unlabelled views only (src/suncet_train.py:288, ``ntxent(z[:2*u_batch_size])``),
ℓ_i = −log( exp(ẑ_i·ẑ_j/τ) / Σ_{k≠i} exp(ẑ_i·ẑ_k/τ) ), averaged over the unlabelled anchors (src/losses.py:120-136).
SuNCEt: i, j, k range over the support views (both views of every labelled image),
ℓ_i = −log( Σ_{j≠i, y_j=y_i} exp(ẑ_i·ẑ_j/τ) / Σ_{k≠i} exp(ẑ_i·ẑ_k/τ) ), averaged over the labelled anchors
(src/losses.py:171-187: ``torch.mean`` over the support rows; the positives are summed inside the log, SupCon's L_out
sums their logs outside). loss = NT-Xent + weight · SuNCEt (src/suncet_train.py:288-293, weight 1, one
``temperature``, configs/suncet/imgnt_train.yaml: 0.1); the second term only during the first ``suncet_until`` share
of training (the authors' ``supervised_epochs``).

Differences kept: each labelled image has two views here (the authors' ``supervised_views: 1``), and NT-Xent's
candidates carry gradient as in selfsup's SimCLR (the authors' gather detaches them, src/losses.py:125), so that
SimCLR at the same batch composition is the baseline with the SuNCEt term off. Under DDP the candidates and labels
are every rank's; each rank's loss is world × its anchors' share of the global means, so the mean over ranks is the
global loss. A batch with no unlabelled (or no labelled) view contributes 0 to that term, still in the graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..distributed import gather, rank, world_size
from ..models.heads import projection_head
from .base import MethodParams, SSLMethod, upcast


def _views(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor):
    """Local anchors [ẑ1; ẑ2] (2n, D), every rank's candidates (2N, D), their labels, and each anchor's own and
    other-view column in the candidates."""
    z1, z2 = F.normalize(upcast(z1), dim=1), F.normalize(upcast(z2), dim=1)
    y_all = gather(labels)
    n, big_n = len(z1), len(y_all)
    local = torch.arange(n, device=z1.device) + rank() * n
    return (torch.cat([z1, z2]), torch.cat([gather(z1), gather(z2)]), torch.cat([labels, labels]),
            torch.cat([y_all, y_all]), torch.cat([local, big_n + local]), torch.cat([big_n + local, local]))


def _mean_over_global_anchors(per_anchor: torch.Tensor, keep: torch.Tensor, keep_all: torch.Tensor) -> torch.Tensor:
    """world × Σ of this rank's kept anchors / the number of kept anchors of every rank (0 when there are none)."""
    return world_size() * (per_anchor * keep).sum() / keep_all.sum().clamp_min(1)


def unlabelled_nt_xent(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent among the views of the unlabelled images (label −1) of every rank; labelled views take no part."""
    anchors, candidates, y_anchor, y_cand, self_idx, pos_idx = _views(z1, z2, labels)
    logits = anchors @ candidates.T / temperature  # (2n, 2N)
    keep = y_anchor < 0
    rows = torch.arange(len(logits), device=logits.device)
    drop = (y_cand >= 0)[None, :] & keep[:, None]  # rows of labelled anchors stay finite (masked out below)
    drop[rows, self_idx] = True
    per_view = torch.logsumexp(logits.masked_fill(drop, float("-inf")), 1) - logits[rows, pos_idx]
    return _mean_over_global_anchors(per_view, keep, y_cand < 0)


def suncet_loss(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SuNCEt of the local labelled views against every rank's labelled views, averaged over the labelled anchors."""
    anchors, candidates, y_anchor, y_cand, self_idx, _ = _views(z1, z2, labels)
    logits = anchors @ candidates.T / temperature  # (2n, 2N)
    keep = y_anchor >= 0
    rows = torch.arange(len(logits), device=logits.device)
    candidate = ((y_cand >= 0)[None, :] | ~keep[:, None]).clone()  # rows of unlabelled anchors stay finite
    candidate[rows, self_idx] = False
    positive = candidate & (y_anchor[:, None] == y_cand[None, :])
    positive[rows, self_idx] = ~keep[rows]  # an unlabelled anchor's row: any finite value (masked out below)
    log_num = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), 1)
    log_den = torch.logsumexp(logits.masked_fill(~candidate, float("-inf")), 1)
    return _mean_over_global_anchors(log_den - log_num, keep, y_cand >= 0)


class SuNCEtParams(MethodParams):
    temperature: float = Field(0.1, gt=0, description="τ of both terms, NT-Xent and SuNCEt (the authors' 0.1)")
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
        t = self.params.temperature
        loss = unlabelled_nt_xent(z1, z2, labels, t)
        if bool(self.suncet_on) and self.params.suncet_weight:
            loss = loss + self.params.suncet_weight * suncet_loss(z1, z2, labels, t)
        return loss

    @torch.no_grad()
    def on_step(self, progress: float) -> None:
        self.suncet_on.fill_(int(progress < self.params.suncet_until))
