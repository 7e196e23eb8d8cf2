"""MoCo v2 (Chen et al. 2020): query q = f_q(x¹), key k = f_k(x²) from a momentum encoder
θ_k ← m·θ_k + (1−m)·θ_q; InfoNCE of q against its key (positive) and a FIFO queue of K past keys (negatives),
symmetrised over the two views.
Shuffled BN (MoCo v2's ``_batch_shuffle_ddp``): f_k sees the global key batch in a random order, split into
``shuffle_bn_groups`` groups that each get their own BatchNorm statistics, and its outputs are un-permuted, so the
statistics that normalise k_i come from a random subset of images, not the batch q_i was normalised with (otherwise
they leak which key is the positive). The permutation comes from the step counter ``shuffle_step`` (a buffer, so a
resumed run draws the same ones); under DDP every rank computes the keys of the gathered global batch identically and
keeps its slice, which equals one process with the same global batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..distributed import gather, rank
from ..models.heads import projection_head
from .base import MethodParams, SSLMethod, ema_update, frozen_copy, upcast


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """−log( exp(q·k/τ) / (exp(q·k/τ) + Σ_{n∈queue} exp(q·n/τ)) ), all vectors l2-normalised, mean over q."""
    q = F.normalize(upcast(q), dim=1)
    k = F.normalize(upcast(k), dim=1)
    pos = (q * k).sum(1, keepdim=True)
    neg = q @ queue.T
    logits = torch.cat([pos, neg], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


class MoCoParams(MethodParams):
    temperature: float = 0.2
    queue_size: int = 4096
    momentum: float = 0.99
    shuffle_bn_groups: int = Field(4, ge=0, description="key-encoder BatchNorm groups of the shuffled batch (0/1: off)")


class MoCo(SSLMethod):
    pure_forward = False  # its forward updates state (the queue / the per-sample targets)
    name = "moco"
    Params = MoCoParams

    @classmethod
    def check_batch(cls, params: MoCoParams, global_batch: int) -> str | None:
        if 2 * global_batch > params.queue_size:  # each step enqueues the keys of both views of the global batch
            return (f"method.queue_size: {params.queue_size} is smaller than 2 x train.batch_size = "
                    f"{2 * global_batch} (each step enqueues the keys of both views)")
        return None

    def __init__(self, backbone, params: MoCoParams):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim)
        self.key_encoder = frozen_copy(nn.Sequential(self.backbone, self.projector))
        self.key_encoder.local_batchnorm = True  # not synced under DDP: its BN batches are the shuffled groups
        self.register_buffer("shuffle_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue", F.normalize(torch.randn(params.queue_size, params.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        keys = F.normalize(gather(upcast(keys)), dim=1)
        k = self.queue.shape[0]
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % k
        self.queue[idx] = keys[: k] if len(keys) <= k else keys[-k:]
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % k)

    @torch.no_grad()
    def _shuffled_keys(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """f_k(x) with BatchNorm statistics per group of a random permutation of the global batch (groups of at
        least 2 images; fewer groups when the batch is too small); this rank's rows, in their order."""
        xs = gather(x)
        n = len(xs)
        perm = torch.randperm(n, generator=generator).to(x.device)
        groups = min(self.params.shuffle_bn_groups, n // 2)
        if groups <= 1:
            keys = self.key_encoder(xs)
        else:
            shuffled = torch.cat([self.key_encoder(chunk) for chunk in xs[perm].tensor_split(groups)])
            keys = torch.empty_like(shuffled)
            keys[perm] = shuffled
        start = rank() * len(x)
        return keys[start:start + len(x)]

    def forward(self, views):
        x1, x2 = views
        q1 = self.projector(self.backbone(x1))
        q2 = self.projector(self.backbone(x2))
        with torch.no_grad():
            if self.training and self.params.shuffle_bn_groups > 1:
                g = torch.Generator().manual_seed(int(self.shuffle_step))
                self.shuffle_step += 1
                k1 = self._shuffled_keys(x1, g)
                k2 = self._shuffled_keys(x2, g)
            else:
                k1 = self.key_encoder(x1)
                k2 = self.key_encoder(x2)
        queue = self.queue.clone()
        tau = self.params.temperature
        loss = 0.5 * (info_nce(q1, k2, queue, tau) + info_nce(q2, k1, queue, tau))
        if self.training:
            self._enqueue(torch.cat([k1, k2]))
        return loss

    @torch.no_grad()
    def on_step(self, progress):
        ema_update(self.key_encoder, nn.Sequential(self.backbone, self.projector), self.params.momentum)
