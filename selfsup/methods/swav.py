"""SwAV (Caron et al. 2020): swapped prediction of online cluster assignments.

s_k = ẑ·c_k/τ against K l2-normalised prototypes c_k (a bias-free linear layer, re-normalised after every optimiser
step, frozen for the first ``freeze_prototypes_fraction`` of training); codes from Sinkhorn-Knopp without gradient,

Q = exp(ẑ·c/ε) (B×K) scaled to total mass 1, then ``sinkhorn_iterations`` times: every column (prototype) to mass
1/K, every row (sample) to mass 1/B; q = B·Q (each row sums to 1, each prototype gets B/K of the batch),

loss = ½·mean_i [ −Σ_k q²_ik log softmax(s¹_i)_k − Σ_k q¹_ik log softmax(s²_i)_k ].

ε = 0.05, 3 iterations, τ = 0.1. B is the GLOBAL batch under DDP (the scores are gathered without gradient, every rank
runs Sinkhorn on the same matrix and keeps its rows), plus the ``queue_size`` past projections of each view when the
queue is on (used once full, as in the authors' code; its rows only shape the codes and are then dropped).

Multi-crop (``augment.local_crops`` > 0; the paper's 2×224 + 6×96): codes come from the two global views only;
every view v (global or local) predicts the code of each global view g ≠ v, and the loss is the mean over those
(g, v) pairs: loss = mean_{g ∈ {1,2}, v ≠ g} mean_i [ −Σ_k q^g_ik log softmax(s^v_i)_k ] (with two views: the
loss above)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..distributed import gather, rank
from ..models.heads import projection_head
from .base import MethodParams, SSLMethod, upcast


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Codes q (B×K, rows sum to 1, columns to B/K once converged; the last step normalises rows, so rows are exact)
    from cosine scores ẑ·c (B×K, the whole batch) by Sinkhorn-Knopp on exp(scores/ε)."""
    scores = upcast(scores)
    b, k = scores.shape
    q = torch.exp((scores - scores.max()) / epsilon)  # a constant factor: cancelled by the normalisation below
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(0, keepdim=True) / k  # each prototype: mass 1/K
        q = q / q.sum(1, keepdim=True) / b  # each sample: mass 1/B
    return q * b


def swapped_prediction(s1: torch.Tensor, s2: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """½·mean_i [ −Σ_k q2_ik log softmax(s1_i)_k − Σ_k q1_ik log softmax(s2_i)_k ] for logits s = ẑ·c/τ."""
    s1, s2 = upcast(s1), upcast(s2)
    return -0.5 * ((q2 * F.log_softmax(s1, 1)).sum(1).mean() + (q1 * F.log_softmax(s2, 1)).sum(1).mean())


def multi_crop_swapped_prediction(scores: list[torch.Tensor], codes: list[torch.Tensor]) -> torch.Tensor:
    """mean over the pairs (g, v), v ≠ g, of −mean_i Σ_k q^g_ik log softmax(s^v_i)_k: ``codes[g]`` are the codes of
    view g (the global views, first in ``scores``), ``scores`` the logits ẑ·c/τ of every view."""
    log_p = [F.log_softmax(upcast(s), 1) for s in scores]
    terms = [-(q * log_p[v]).sum(1).mean() for g, q in enumerate(codes) for v in range(len(scores)) if v != g]
    return torch.stack(terms).mean()


class SwAVParams(MethodParams):
    num_prototypes: int = Field(100, ge=2, description="K, the number of prototypes (clusters)")
    temperature: float = Field(0.1, gt=0, description="τ of the softmax over prototype scores")
    epsilon: float = Field(0.05, gt=0, description="ε of Sinkhorn-Knopp (entropic regularisation of the codes)")
    sinkhorn_iterations: int = Field(3, ge=1, description="Sinkhorn-Knopp normalisation rounds")
    freeze_prototypes_fraction: float = Field(0.05, ge=0, le=1, description="fraction of training during which the "
                                              "prototypes get no gradient (the paper: the first epoch)")
    queue_size: int = Field(0, ge=0, description="past projections per view added to the Sinkhorn batch once the "
                            "queue is full (0: off; helps when the batch is small against K)")


class SwAV(SSLMethod):
    name = "swav"
    Params = SwAVParams
    multi_crop = True

    def __init__(self, backbone, params: SwAVParams):
        super().__init__(backbone, params)
        self.pure_forward = params.queue_size == 0  # with the queue on, a training forward enqueues
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim)
        self.prototypes = nn.Linear(params.proj_dim, params.num_prototypes, bias=False)
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))
        self.register_buffer("queue", torch.zeros(2, params.queue_size, params.proj_dim))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))

    def prototype_weight(self) -> torch.Tensor:
        """The prototypes as used in the graph: no gradient while frozen (but still in the graph: DDP's static graph
        must not change between steps)."""
        w = self.prototypes.weight
        if float(self.progress) < self.params.freeze_prototypes_fraction:
            return w.detach() + 0 * w
        return w

    def codes(self, z: torch.Tensor, w: torch.Tensor, view: int) -> torch.Tensor:
        """Sinkhorn codes of this rank's rows of ``z`` (ẑ, l2-normalised), computed over the global batch and, when
        full, the queue of that view."""
        with torch.no_grad():
            zg = gather(z.detach())
            if self.queue.shape[1] and int(self.queue_count) >= self.queue.shape[1]:
                zg = torch.cat([zg, self.queue[view].to(zg.dtype)])
            q = sinkhorn(zg @ w.detach().T, self.params.epsilon, self.params.sinkhorn_iterations)
            start = rank() * len(z)
            return q[start:start + len(z)]

    @torch.no_grad()
    def _enqueue(self, zs: list[torch.Tensor]) -> None:
        size = self.queue.shape[1]
        for v, z in enumerate(zs):
            new = gather(z.detach()).to(self.queue.dtype)[:size]
            self.queue[v] = torch.cat([new, self.queue[v][: size - len(new)]])
        self.queue_count.add_(len(new))

    def forward(self, views):
        zs = [F.normalize(upcast(z), dim=1) for z in self.encode_joint(views, self.projector)]
        z1, z2 = zs[:2]  # the global views; any further ones are local crops (multi-crop)
        w = upcast(self.prototype_weight())
        q1, q2 = self.codes(z1, w, 0), self.codes(z2, w, 1)
        t = self.params.temperature
        if len(zs) == 2:
            loss = swapped_prediction(z1 @ w.T / t, z2 @ w.T / t, q1, q2)
        else:
            loss = multi_crop_swapped_prediction([z @ w.T / t for z in zs], [q1, q2])
        if self.training and self.queue.shape[1]:
            self._enqueue([z1, z2])
        return loss

    @torch.no_grad()
    def on_step(self, progress):
        self.progress.fill_(progress)
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))
