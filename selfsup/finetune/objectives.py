"""Classification objectives for fine-tuning on (possibly noisy) labels: ``loss(logits, labels, idx, epoch)``.

- ``ce``: cross-entropy.
- ``label_smoothing``: cross-entropy against (1 − ε)·onehot + ε/K.
- ``gce``: generalized cross-entropy (Zhang & Sabuncu 2018), L = (1 − p_y^q) / q.
- ``sat``: self-adaptive training (Huang et al. 2020), exactly as the authors' code: per-sample targets T (N×K)
  start as onehot(y); for epochs < E_s plain CE; afterwards T[i] ← α·T[i] + (1 − α)·softmax(logits_i) (detached),
  weights w_i = max_j T[i, j] rescaled to mean 1 over the batch, loss = mean_i w_i · Σ_j −T[i, j]·log softmax_ij.
- ``sat_selective``: the abstain variant — K + 1 outputs; p̃_i = EMA (α) of the softmax over the first K logits,
  initialised to onehot(y); target t: t_y = p̃_y, t_abstain = 1 − p̃_y, other entries 0; cross-entropy over all K + 1
  outputs, no re-weighting; plain CE (on the first K outputs' labels) before E_s.

The per-sample tables are buffers: they are saved in every checkpoint and restored on resume.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather


class Objective(nn.Module):
    name = "ce"
    extra_outputs = 0  # outputs beyond the K classes (the abstain logit)

    def forward(self, logits, labels, idx, epoch: float) -> torch.Tensor:
        return F.cross_entropy(logits, labels)


class LabelSmoothing(Objective):
    name = "label_smoothing"

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits, labels, idx, epoch):
        return F.cross_entropy(logits, labels, label_smoothing=self.smoothing)


class GCE(Objective):
    name = "gce"

    def __init__(self, q: float = 0.7):
        super().__init__()
        self.q = q

    def forward(self, logits, labels, idx, epoch):
        p_y = F.softmax(logits.float(), 1).gather(1, labels[:, None]).squeeze(1).clamp_min(1e-7)
        return ((1 - p_y.pow(self.q)) / self.q).mean()


class _PerSample(Objective):
    """Shared: a per-sample table initialised from the labels, updated by index (gathered across DDP ranks)."""

    def __init__(self, labels: torch.Tensor, num_classes: int, alpha: float, start_epoch: float):
        super().__init__()
        self.alpha, self.start_epoch, self.num_classes = alpha, start_epoch, num_classes
        self.register_buffer("soft", F.one_hot(labels.long(), num_classes).float())

    @torch.no_grad()
    def _update(self, probs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        all_idx, all_p = gather(idx), gather(probs)
        self.soft[all_idx] = self.alpha * self.soft[all_idx] + (1 - self.alpha) * all_p
        return self.soft[idx]


class SelfAdaptive(_PerSample):
    name = "sat"

    def forward(self, logits, labels, idx, epoch):
        if epoch < self.start_epoch:
            return F.cross_entropy(logits, labels)
        logp = F.log_softmax(logits.float(), 1)
        t = self._update(logp.detach().exp(), idx)
        w = t.max(1).values
        w = w * len(w) / w.sum()
        return (w * (-(t * logp).sum(1))).mean()


class SelfAdaptiveSelective(_PerSample):
    name = "sat_selective"
    extra_outputs = 1

    def forward(self, logits, labels, idx, epoch):
        k = self.num_classes
        if epoch < self.start_epoch:
            return F.cross_entropy(logits[:, :k], labels)
        logp = F.log_softmax(logits.float(), 1)  # over K + 1
        p_tilde = self._update(F.softmax(logits[:, :k].detach().float(), 1), idx)
        p_y = p_tilde.gather(1, labels[:, None]).squeeze(1)
        t = torch.zeros_like(logp)
        t.scatter_(1, labels[:, None], p_y[:, None])
        t[:, k] = 1 - p_y
        return -(t * logp).sum(1).mean()


LOSSES = ("ce", "label_smoothing", "gce", "sat", "sat_selective")


def build_objective(name: str, labels: torch.Tensor, num_classes: int, fcfg) -> Objective:
    if name == "ce":
        return Objective()
    if name == "label_smoothing":
        return LabelSmoothing(fcfg.smoothing)
    if name == "gce":
        return GCE(fcfg.gce_q)
    if name == "sat":
        return SelfAdaptive(labels, num_classes, fcfg.sat_alpha, fcfg.sat_start_epoch)
    if name == "sat_selective":
        return SelfAdaptiveSelective(labels, num_classes, fcfg.sat_alpha, fcfg.sat_start_epoch)
    raise ValueError(f"unknown loss {name!r} (choose {', '.join(LOSSES)})")
