"""DINO (Caron et al. 2021): self-distillation with no labels. A student (backbone + DINO head) matches a teacher, the
EMA of the student (θ_t ← m·θ_t + (1 − m)·θ_s, m from ``base_momentum`` to 1 on a cosine schedule), over K
prototypes; two views, each view's teacher output the target of the other view's student output:

P_t(x) = softmax((g_t(x) − c)/τ_t),  P_s(x) = softmax(g_s(x)/τ_s),
loss = ½ [ H(P_t(x¹), P_s(x²)) + H(P_t(x²), P_s(x¹)) ],  H(a, b) = −Σ_k a_k log b_k  (mean over the batch)

The teacher is centred (c ← λ·c + (1 − λ)·mean of the teacher's logits over the global batch of both views, λ = 0.9,
updated after the loss is computed) and sharpened (τ_t rises linearly from ``warmup_teacher_temp`` to
``teacher_temp`` over the first ``warmup_teacher_temp_fraction`` of training; τ_s = 0.1). Centring keeps one
prototype from dominating, sharpening keeps the output from going uniform; both stop the collapse.
The DINO head: MLP (Linear-GELU, ``head_layers`` deep) → l2-normalised bottleneck (``proj_dim``) → weight-normalised
Linear to K = ``out_dim`` prototypes (no bias; its norm fixed at 1 unless ``norm_last_layer`` is false).
c and τ_t are buffers, so checkpoints carry them and a resumed run continues exactly.
The prototypes (the head's last layer) are frozen for the first ``freeze_last_layer_fraction`` of training, as
DINO's ``--freeze_last_layer 1`` (1 of 100 epochs; main_dino.py:93, :333-334, utils.py:144-149). The reference sets
their ``.grad`` to None after backward; here the trainer is not touched and the layer stays in the graph with a
zero gradient (DDP's static graph must not change between steps), as SwAV's prototypes: with SGD or AdamW and no
weight decay on it the weights do not move; weight decay still shrinks v, which with ``norm_last_layer`` (v/‖v‖)
leaves the output unchanged. The switch is a buffer set in ``on_step`` (checkpointed).

Multi-crop (``augment.local_crops`` > 0; the paper's 2×224 + 10×96): the teacher sees the two global views only, the
student every view; loss = mean over the pairs (teacher view i, student view j), j ≠ i, of H(P_t(x^i), P_s(x^j));
the centre is updated from the teacher's outputs of the global views (with two views: the loss above)."""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..distributed import gather
from .base import MethodParams, SSLMethod, cosine_momentum, ema_update, frozen_copy, upcast


class WeightNormLinear(nn.Module):
    """y = x · (g ⊙ v/‖v‖)ᵀ, each output row's weight normalised (Salimans & Kingma 2016), no bias; g fixed at 1
    (no parameter) when ``learn_norm`` is false."""

    def __init__(self, in_dim: int, out_dim: int, learn_norm: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's initialisation
        self.norm = nn.Parameter(torch.ones(out_dim, 1)) if learn_norm else None

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        v, g = self.weight, self.norm
        if frozen:  # no gradient, but still in the graph
            v = v.detach() + 0 * v
            g = None if g is None else g.detach() + 0 * g
        w = F.normalize(v, dim=1)
        return F.linear(x, w if g is None else g * w)


class DINOHead(nn.Module):
    """MLP → l2-normalised bottleneck → weight-normalised Linear to K prototypes (the logits g(x))."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, out_dim: int, layers: int = 3,
                 batch_norm: bool = True, norm_last_layer: bool = True):
        super().__init__()
        blocks: list[nn.Module] = []
        d = in_dim
        for _ in range(layers - 1):
            blocks.append(nn.Linear(d, hidden))
            if batch_norm:
                blocks.append(nn.BatchNorm1d(hidden))
            blocks.append(nn.GELU())
            d = hidden
        blocks.append(nn.Linear(d, bottleneck))
        self.mlp = nn.Sequential(*blocks)
        self.prototypes = WeightNormLinear(bottleneck, out_dim, learn_norm=not norm_last_layer)

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        return self.prototypes(F.normalize(self.mlp(x), dim=1), freeze_last_layer)


def teacher_probs(t: torch.Tensor, center: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """P_t = softmax((t − c)/τ_t), no gradient."""
    return F.softmax((upcast(t.detach()) - center) / temperature, dim=1)


def updated_center(center: torch.Tensor, t: torch.Tensor, momentum: float) -> torch.Tensor:
    """c ← λ·c + (1 − λ)·mean of ``t`` over the global batch (all ranks), no gradient."""
    return momentum * center + (1 - momentum) * gather(upcast(t.detach())).mean(0)


def dino_loss(s1: torch.Tensor, s2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, center: torch.Tensor,
              student_temp: float, teacher_temp: float | torch.Tensor) -> torch.Tensor:
    """½ [H(P_t(t¹), P_s(s²)) + H(P_t(t²), P_s(s¹))], each H the batch mean of −Σ_k P_t log P_s; the teacher's
    logits ``t`` get no gradient."""
    p1, p2 = teacher_probs(t1, center, teacher_temp), teacher_probs(t2, center, teacher_temp)
    log_s1 = F.log_softmax(upcast(s1) / student_temp, dim=1)
    log_s2 = F.log_softmax(upcast(s2) / student_temp, dim=1)
    return 0.5 * (-(p1 * log_s2).sum(1).mean() - (p2 * log_s1).sum(1).mean())


def multi_crop_dino_loss(students: list[torch.Tensor], teachers: list[torch.Tensor], center: torch.Tensor,
                         student_temp: float, teacher_temp: float | torch.Tensor) -> torch.Tensor:
    """mean over the pairs (i, j), j ≠ i, of H(P_t(teachers[i]), P_s(students[j])) (each H a batch mean): the
    teacher's logits of the global views (the first views of ``students``), the student's of every view."""
    p_t = [teacher_probs(t, center, teacher_temp) for t in teachers]
    log_s = [F.log_softmax(upcast(s) / student_temp, dim=1) for s in students]
    terms = [-(p * log_s[j]).sum(1).mean() for i, p in enumerate(p_t) for j in range(len(log_s)) if j != i]
    return torch.stack(terms).mean()


def teacher_temperature(progress: float, start: float, end: float, warmup_fraction: float) -> float:
    """τ_t: linear from ``start`` to ``end`` over the first ``warmup_fraction`` of training, then ``end``."""
    if warmup_fraction <= 0 or progress >= warmup_fraction:
        return end
    return start + (end - start) * max(progress, 0.0) / warmup_fraction


class DINOParams(MethodParams):
    proj_hidden: int = Field(512, gt=0, description="hidden width of the DINO head's MLP (the paper: 2048)")
    proj_dim: int = Field(128, gt=0, description="bottleneck width of the DINO head, l2-normalised before the "
                                                 "prototypes (the paper: 256)")
    out_dim: int = Field(1024, gt=1, description="K, the number of prototypes (the teacher/student softmax width; "
                                                 "the paper: 65536 on ImageNet)")
    head_layers: int = Field(3, ge=1, description="Linear layers of the DINO head's MLP (GELU between them)")
    head_bn: bool = Field(True, description="BatchNorm after each hidden Linear of the DINO head (the paper's ViT "
                                            "head has none; with the small CNNs here it learns much faster)")
    norm_last_layer: bool = Field(True, description="fix the norm of each prototype at 1 (weight norm without a "
                                                    "learned gain; the paper's default, more stable)")
    student_temp: float = Field(0.1, gt=0, description="τ_s, the student's softmax temperature")
    teacher_temp: float = Field(0.07, gt=0, description="τ_t after the warm-up (sharpening)")
    warmup_teacher_temp: float = Field(0.04, gt=0, description="τ_t at the start of training")
    warmup_teacher_temp_fraction: float = Field(0.3, ge=0, le=1, description=(
        "fraction of training over which τ_t rises linearly from warmup_teacher_temp to teacher_temp (the paper: "
        "30 of 100 epochs)"))
    center_momentum: float = Field(0.9, ge=0, lt=1, description="λ of the teacher centre c ← λ·c + (1 − λ)·batch "
                                                                "mean of the teacher's logits")
    base_momentum: float = Field(0.996, ge=0, le=1, description="teacher EMA momentum at step 0 (cosine schedule to 1)")
    freeze_last_layer_fraction: float = Field(0.01, ge=0, le=1, description=(
        "fraction of training during which the head's last layer (the prototypes) gets no gradient (the paper: the "
        "first of 100 epochs)"))


class DINO(SSLMethod):
    name = "dino"
    Params = DINOParams
    pure_forward = False  # forward updates the teacher centre
    multi_crop = True

    def __init__(self, backbone, params: DINOParams):
        super().__init__(backbone, params)
        self.head = DINOHead(backbone.feat_dim, params.proj_hidden, params.proj_dim, params.out_dim,
                             params.head_layers, params.head_bn, params.norm_last_layer)
        self.teacher = frozen_copy(nn.Sequential(self.backbone, self.head))
        self.register_buffer("center", torch.zeros(params.out_dim))
        self.register_buffer("teacher_temp", torch.tensor(params.warmup_teacher_temp if
                                                          params.warmup_teacher_temp_fraction > 0
                                                          else params.teacher_temp))
        self.register_buffer("last_layer_frozen", torch.tensor(int(params.freeze_last_layer_fraction > 0)))

    def forward(self, views):
        students = self.encode_joint(views, partial(self.head, freeze_last_layer=bool(self.last_layer_frozen)))
        with torch.no_grad():  # the teacher sees the two global views only (multi-crop: the rest are local crops)
            t1, t2 = self.teacher(torch.cat(views[:2], 0)).chunk(2, 0)
        if len(views) == 2:
            s1, s2 = students
            loss = dino_loss(s1, s2, t1, t2, self.center, self.params.student_temp, self.teacher_temp)
        else:
            loss = multi_crop_dino_loss(students, [t1, t2], self.center, self.params.student_temp, self.teacher_temp)
        if self.training:
            self.center.copy_(updated_center(self.center, torch.cat([t1, t2]), self.params.center_momentum))
        return loss

    @torch.no_grad()
    def on_step(self, progress):
        p = self.params
        ema_update(self.teacher, nn.Sequential(self.backbone, self.head), cosine_momentum(p.base_momentum, progress))
        self.teacher_temp.fill_(teacher_temperature(progress, p.warmup_teacher_temp, p.teacher_temp,
                                                    p.warmup_teacher_temp_fraction))
        self.last_layer_frozen.fill_(int(progress < p.freeze_last_layer_fraction))
