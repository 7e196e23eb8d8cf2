"""MSN (Assran et al. 2022): masked siamese networks, and PMSN (Assran et al. 2023) as its ``prior: power_law``.

The anchor (view 2) enters the ViT with a share ``mask_ratio`` of its patch tokens dropped (per sample, MAE's
shuffle); the target (view 1, whole) goes through the EMA target encoder (θ_t ← m·θ_t + (1 − m)·θ, m linear from
``base_momentum`` to 1 at 1.25× the training length, as the authors' schedule). Both through a 3-layer projector;
ẑ, q_k l2-normalised, K learnable prototypes (facebookresearch/msn src/losses.py:38-42, lightly msn_loss.py:229-244):

p = softmax(ẑ·qᵀ/τ),  p⁺ = softmax(ẑ⁺·qᵀ/(τ·T)) (= p^(1/T) renormalised; no gradient; ``sinkhorn_iterations`` > 0:
then Sinkhorn-balanced over the global batch, src/losses.py:93-127),
loss = mean over anchors H(p⁺, p) + λ·KL(p̄ ‖ π),  p̄ = mean of p over every anchor of the global batch,

π uniform: KL(p̄ ‖ π) = log K − H(p̄), the mean-entropy maximisation (me-max) term (src/losses.py:69-72);
π_k ∝ k^(−``power_law_exponent``) with ``prior: power_law`` (PMSN; /work/shared/reference/methods.md:61. lightly's
PMSNLoss, pmsn_loss.py:78-80, computes the other direction, KL(π ‖ p̄)). τ = 0.1, T = 0.25 (τ⁺ = 0.025), λ = 1.

Multi-crop (``augment.local_crops``): the local crops are further anchors (the paper's focal views, unmasked as in
the authors' code, src/deit.py:221-228), each scored against the target of its image. Masks draw from the method's
seeded generator (checkpointed; every rank draws the noise of the global batch and keeps its block of rows, the
images the trainer deals it, selfsup/data/loader.py, so two processes mask as one). The prototypes' gradient is
DDP's mean over ranks (the authors' code sums it, src/msn_train.py:367)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..distributed import all_reduce_sum, gather, rank, world_size
from ..models.heads import projection_head
from .base import MethodParams, SSLMethod, ema_update, frozen_copy, upcast
from .mae import random_masking
from .swav import sinkhorn


def log_prior(k: int, prior: str, exponent: float) -> torch.Tensor:
    """log π over K prototypes: uniform, or the power law π_k ∝ k^(−exponent), k = 1..K (float64)."""
    if prior == "uniform":
        return torch.full((k,), -math.log(k), dtype=torch.float64)
    log_w = -exponent * torch.arange(1, k + 1, dtype=torch.float64).log()
    return log_w - torch.logsumexp(log_w, 0)


@dataclass(frozen=True)
class MeanEntropyPrior:
    """The regulariser λ·KL(p̄ ‖ π): ``weight`` λ and ``log_pi`` log π over the K prototypes (:func:`log_prior`)."""
    weight: float
    log_pi: torch.Tensor


def msn_loss(anchors: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor, temperature: float,
             sharpen: float, sinkhorn_iterations: int, prior: MeanEntropyPrior) -> torch.Tensor:
    """mean_i H(p⁺_i, p_i) + λ·KL(p̄ ‖ π): ``anchors`` (V·N, D) view-major, ``targets`` (N, D) (no gradient),
    ``prototypes`` (K, D); p̄ and the Sinkhorn batch are global under DDP."""
    reg_weight, log_pi = prior.weight, prior.log_pi
    w = F.normalize(upcast(prototypes), dim=1)
    log_p = F.log_softmax(F.normalize(upcast(anchors), dim=1) @ w.T / temperature, dim=1)
    with torch.no_grad():
        t = F.normalize(upcast(targets.detach()), dim=1) @ w.detach().T
        log_q = F.log_softmax(t / (temperature * sharpen), dim=1)
        n = len(log_q)  # Sinkhorn on the sharpened probabilities (ε = 1 on their logarithm)
        q = sinkhorn(gather(log_q), 1.0, sinkhorn_iterations)[rank() * n:(rank() + 1) * n] \
            if sinkhorn_iterations > 0 else log_q.exp()
        q = q.repeat(len(anchors) // n, 1)
    loss = -(q * log_p).sum(1).mean()
    if reg_weight > 0:
        p_bar = all_reduce_sum(log_p.exp().sum(0)) / (len(log_p) * world_size())
        loss = loss + reg_weight * (p_bar * (p_bar.log() - log_pi.to(p_bar))).sum()
    return loss


def momentum_at(base: float, progress: float) -> float:
    """The authors' schedule: linear from ``base`` to 1 over 1.25× training (src/msn_train.py:253-255)."""
    return base + (1 - base) * min(max(progress, 0.0), 1.0) / 1.25


class MSNParams(MethodParams):
    proj_hidden: int = Field(512, gt=0, description="hidden width of the 3-layer projector (the paper: 2048)")
    proj_dim: int = Field(128, gt=0, description="output width of the projector = prototype width (the paper: 256)")
    num_prototypes: int = Field(1024, ge=2, description="K, the number of learnable prototypes (the paper: 1024)")
    temperature: float = Field(0.1, gt=0, description="τ of the anchors' softmax over prototype cosines")
    sharpen_temp: float = Field(0.25, gt=0, le=1, description="T: the target is sharpened to p^(1/T) (τ⁺ = τ·T)")
    mask_ratio: float = Field(0.15, ge=0, lt=1, description="share of the anchor's patch tokens dropped, "
                                                            "round(ratio·L) per image (the paper: 0.15 for ViT-S/16)")
    sinkhorn_iterations: int = Field(3, ge=0, description="Sinkhorn-Knopp rounds balancing the targets over the "
                                                          "global batch (0: off)")
    me_max_weight: float = Field(1.0, ge=0, description="λ of the KL(p̄ ‖ π) regulariser (me-max with the uniform "
                                                        "prior; 0: off)")
    prior: Literal["uniform", "power_law"] = Field("uniform", description="π: uniform (MSN's me-max) or a power "
                                                                        "law over the prototypes (PMSN)")
    power_law_exponent: float = Field(0.25, ge=0, description="prior power_law: π_k ∝ k^(−exponent) (PMSN: 0.25)")
    base_momentum: float = Field(0.996, ge=0, le=1, description="target EMA momentum at step 0 (linear to 1 at "
                                                                "1.25× training, the authors' schedule)")


class MSN(SSLMethod):
    name = "msn"
    Params = MSNParams
    pure_forward = False  # every forward draws new masks
    multi_crop = True

    @classmethod
    def check_model(cls, params: MSNParams, model) -> str | None:
        if model.backbone != "vit":
            return f"model.backbone: msn needs the vit backbone (model.backbone: vit), not {model.backbone}"
        return None

    def __init__(self, backbone, params: MSNParams):
        super().__init__(backbone, params)
        self.projector = projection_head(backbone.feat_dim, params.proj_hidden, params.proj_dim, layers=3)
        bound = params.proj_dim ** -0.5  # the authors' initialisation (src/msn_train.py:221-223)
        self.prototypes = nn.Parameter(torch.empty(params.num_prototypes, params.proj_dim).uniform_(-bound, bound))
        self.target = frozen_copy(nn.Sequential(self.backbone, self.projector))
        self.register_buffer("log_pi", log_prior(params.num_prototypes, params.prior, params.power_law_exponent),
                             persistent=False)
        self.gen = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, ())))  # as MAE's mask generator

    def generators(self) -> dict[str, torch.Generator]:
        return {"mask": self.gen}

    def masked_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's features of ``x`` with round(``mask_ratio``·L) patch tokens of each image dropped."""
        bb = self.backbone
        grid, tokens = bb.grid(x), bb.embed(x)
        n, length, d = tokens.shape
        num_masked = min(round(self.params.mask_ratio * length), length - 1)
        noise = torch.rand(world_size() * n, length, generator=self.gen)[rank() * n:(rank() + 1) * n]  # as the batch
        if num_masked == 0:
            return bb.pool(bb.encode(tokens), *grid)
        ids_keep = random_masking(noise.to(x.device), num_masked)[0]
        visible = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, d))
        return bb.pool(bb.encode(visible), *grid, ids_keep=ids_keep)

    def forward(self, views):
        feats = [self.masked_features(views[1])]
        if len(views) > 2:  # local crops (focal views): unmasked anchors
            feats.append(self.backbone(torch.cat(views[2:])))
        anchors = self.projector(torch.cat(feats))
        with torch.no_grad():
            targets = self.target(views[0])
        p = self.params
        return msn_loss(anchors, targets, self.prototypes, p.temperature, p.sharpen_temp, p.sinkhorn_iterations,
                        MeanEntropyPrior(p.me_max_weight, self.log_pi))

    @torch.no_grad()
    def on_step(self, progress):
        ema_update(self.target, nn.Sequential(self.backbone, self.projector),
                   momentum_at(self.params.base_momentum, progress))
