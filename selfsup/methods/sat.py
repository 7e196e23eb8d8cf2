"""Self-adaptive training, SSL variant (Huang, Zhang & Zhang, TPAMI extension of NeurIPS 2020).

There is no public code; this is our exact choice. BYOL's online encoder + projector + predictor q, but no momentum
network: every training image i keeps a target t_i, an exponential moving average over its visits of the
l2-normalised mean projection of its two views (the same α update as supervised SAT):

    z̄_i = normalize(normalize(z_i¹) + normalize(z_i²))               (detached)
    t_i ← normalize(α·t_i + (1 − α)·z̄_i)        (t_i = z̄_i at the first visit)
    loss = Σ_{v=1,2} mean_i (2 − 2·cos(q(z_i^v), t_i))    (normalised MSE between prediction and target)

The targets live in a buffer indexed by the sample's stable index (the loop passes ``idx``), are saved in every
checkpoint and restored on resume. Images without an index (``idx = -1``: replayed ones) use z̄_i without memory.
Under DDP the indices and new targets are gathered, so every rank holds the same table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..distributed import gather
from ..models.heads import prediction_head, projection_head
from .base import MethodParams, SSLMethod
from .byol import byol_loss


class SATParams(MethodParams):
    pred_hidden: int = 512
    alpha: float = Field(0.9, ge=0, lt=1, description="EMA momentum of the per-sample targets")


class SelfAdaptiveSSL(SSLMethod):
    pure_forward = False  # its forward updates state (the queue / the per-sample targets)
    name = "sat"
    recipe = "asymmetric"
    Params = SATParams
    uses_indices = True

    def __init__(self, backbone, params: SATParams, num_samples: int = 0):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim)
        self.predictor = prediction_head(params.proj_dim, params.pred_hidden)
        self.register_buffer("targets", torch.zeros(num_samples, params.proj_dim))
        self.register_buffer("visited", torch.zeros(num_samples, dtype=torch.bool))

    def reserve(self, num_samples: int) -> None:
        """Make room for indices up to ``num_samples`` − 1 (a stream grows by a chunk at a time)."""
        n = self.targets.shape[0]
        if num_samples > n:
            self.targets = torch.cat([self.targets, self.targets.new_zeros(num_samples - n, self.targets.shape[1])])
            self.visited = torch.cat([self.visited, self.visited.new_zeros(num_samples - n)])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "targets"
        if key in state_dict:
            self.reserve(state_dict[key].shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def update_targets(self, zbar: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The EMA update for this batch; returns each sample's target (z̄ where there is no index)."""
        all_idx, all_z = gather(idx), gather(zbar)
        known = all_idx >= 0
        if known.any() and int(all_idx.max()) >= self.targets.shape[0]:
            raise IndexError(f"sample index {int(all_idx.max())} beyond the {self.targets.shape[0]} targets; "
                             f"call reserve() first")
        ii, zk = all_idx[known], all_z[known]
        a = self.params.alpha
        new = torch.where(self.visited[ii, None], F.normalize(a * self.targets[ii] + (1 - a) * zk, dim=1), zk)
        self.targets[ii] = new.to(self.targets.dtype)
        self.visited[ii] = True
        mine = idx >= 0
        t = zbar.clone()
        t[mine] = self.targets[idx[mine]].to(t.dtype)
        return t

    def forward(self, views, idx: torch.Tensor | None = None):
        z1, z2 = self.encode_joint(views, self.projector)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            zbar = F.normalize(F.normalize(z1.float(), dim=1) + F.normalize(z2.float(), dim=1), dim=1)
            if idx is None:
                idx = torch.full((zbar.shape[0],), -1, dtype=torch.long, device=zbar.device)
            t = self.update_targets(zbar, idx)
        return byol_loss(p1, t) + byol_loss(p2, t)
