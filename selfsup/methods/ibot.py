"""iBOT (Zhou et al. 2022): DINO's [CLS] self-distillation plus masked image modelling in its feature space, on the
ViT. The student sees each global view with blockwise-masked patches (a learnable mask token in place of their
embeddings, positions kept); the teacher (the EMA of backbone + DINO head, as :mod:`.dino`) sees the full view:

loss = L_cls + ``patch_weight``·L_patch + ``koleo_weight``·Σ_views KoLeo(student backbone features of the view)
L_cls   = DINO's two-view loss (:func:`.dino.dino_loss`, the student's features of the masked views)
L_patch = mean over images n of [ Σ_{i masked in n} H(P_t(u_i), P_s(û_i)) / max(#masked in n, 1) ]

u_i / û_i the head's logits of patch token i from the teacher (full view) / the student (masked view, same view),
P_t = softmax((u − c₂)/τ_t), its own centre c₂ ← λ·c₂ + (1 − λ)·mean of the teacher's patch logits over all tokens
of the global batch (bytedance/ibot main_ibot.py:540-551 and 569-572; lightly ibot_loss.py:88-104; dinov2
ibot_patch_loss.py:113-126). Images left unmasked add 0 and still count in the mean over images, as in all three.
The head is shared by the [CLS] and patch tokens (iBOT's ``--shared_head true``, DINOv2's default); τ_t follows
DINO's warm-up for both (iBOT's defaults give both the same 0.04 → 0.07).

Masks (ibot loader.py:65-100, BEiT's blockwise masking): each image of each view is masked with probability
``mask_probability`` at a ratio r ~ U(``mask_ratio_min``, ``mask_ratio_max``): rectangles of area ≥ (min(H, W)//3)²
patches and aspect ratio in [0.3, 1/0.3] are added while fewer than r·L patches are masked. Each step draws one
seed from the method's generator (checkpointed, so a resumed run masks as an uninterrupted one); under DDP every
rank draws the masks of the global batch and takes its own, so two processes mask as one.

KoLeo (Sablayrolles et al. 2019; DINOv2 adds it with weight 0.1, dinov2 koleo_loss.py:38-47, lightly
koleo_loss.py:52-64): −mean_i log(‖x̂_i − x̂_nn(i)‖ + ε), x̂ the l2-normalised features, nn(i) the nearest other
sample of the (global) batch; computed per view so that two views of one image are not neighbours.
configs/dinov2_fmnist.yaml is DINO + iBOT-patch + KoLeo (DINOv2's objective, without its Sinkhorn-Knopp centring)."""
from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..distributed import gather, rank, world_size
from ..models.vit import sincos_2d
from .base import upcast
from .dino import DINO, DINOParams, dino_loss, teacher_probs, updated_center


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """−mean_i log(‖x̂_i − x̂_nn(i) + ε‖ + ε) over the rows of ``x`` (the distance as torch's PairwiseDistance)."""
    x = F.normalize(upcast(x), dim=1, eps=eps)
    dots = (x @ x.T).detach()
    dots.fill_diagonal_(-2.0)  # never one's own neighbour
    return -(F.pairwise_distance(x, x[dots.argmax(1)], eps=eps) + eps).log().mean()


def ibot_patch_loss(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, center: torch.Tensor,
                    student_temp: float, teacher_temp: float | torch.Tensor) -> torch.Tensor:
    """L_patch: ``s`` / ``t`` (M, K) the student / teacher logits of the M masked tokens (``mask`` (N, L), rows in
    its row-major order); each image's cross-entropy averaged over its masked tokens, then over the N images."""
    h = -(teacher_probs(t, center, teacher_temp) * F.log_softmax(upcast(s) / student_temp, dim=1)).sum(1)
    weight = mask.sum(1).clamp_min(1).to(h.dtype).reciprocal()[:, None].expand(mask.shape)[mask]
    return (h * weight).sum() / mask.shape[0]


def block_mask(rng: random.Random, gh: int, gw: int, target: float,
               aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> np.ndarray:
    """A (gh, gw) boolean mask: rectangles added while fewer than ``target`` patches are masked, each adding 1 to
    (target − masked) new patches (up to 10 tries for one; none found: stop)."""
    mask = np.zeros((gh, gw), dtype=bool)
    low, log_ar, count = max((min(gh, gw) // 3) ** 2, 1), (math.log(aspect[0]), math.log(aspect[1])), 0
    while count < target:
        delta = 0
        for _ in range(10):
            area, ar = rng.uniform(low, target - count), math.exp(rng.uniform(*log_ar))
            h, w = round(math.sqrt(area * ar)), round(math.sqrt(area / ar))
            if h < gh and w < gw:
                top, left = rng.randint(0, gh - h), rng.randint(0, gw - w)
                new = h * w - int(mask[top:top + h, left:left + w].sum())
                if 0 < new <= target - count:
                    mask[top:top + h, left:left + w] = True
                    delta = new
                    break
        if delta == 0:
            break
        count += delta
    return mask


class IBOTParams(DINOParams):
    head_bn: bool = Field(False, description="BatchNorm after each hidden Linear of the head (iBOT's ViT head: none)")
    patch_weight: float = Field(1.0, ge=0, description="λ₂, weight of the masked-patch loss (the paper: 1)")
    patch_center_momentum: float = Field(0.9, ge=0, lt=1, description="λ of the teacher's patch centre")
    mask_probability: float = Field(0.5, ge=0, le=1, description="share of the images that are masked (the paper: "
                                                                 "0.5, the others keep every patch)")
    mask_ratio_min: float = Field(0.1, ge=0, lt=1, description="a masked image's ratio r ~ U(min, max) of patches")
    mask_ratio_max: float = Field(0.5, gt=0, lt=1, description="upper end of the masking ratio (the paper: 0.5)")
    koleo_weight: float = Field(0.0, ge=0, description="weight of the KoLeo term on the student's backbone "
                                                       "features (DINOv2: 0.1; 0: off)")


class IBOT(DINO):
    name = "ibot"
    Params = IBOTParams
    multi_crop = False

    @classmethod
    def check_model(cls, params: IBOTParams, model) -> str | None:
        if model.backbone != "vit":
            return f"model.backbone: ibot needs the vit backbone (model.backbone: vit), not {model.backbone}"
        if model.vit_pool == "grid":
            return "model.vit_pool: ibot's head reads one token per image (choose cls or mean), not grid"
        if params.mask_ratio_min > params.mask_ratio_max:
            return f"method.mask_ratio_min ({params.mask_ratio_min}) exceeds mask_ratio_max ({params.mask_ratio_max})"
        return None

    def __init__(self, backbone, params: IBOTParams):
        super().__init__(backbone, params)
        self.mask_token = torch.nn.Parameter(torch.zeros(backbone.dim))  # 1-D: no weight decay
        torch.nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("patch_center", torch.zeros(params.out_dim))
        self.gen = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, ())))  # as MAE's mask generator

    def generators(self) -> dict[str, torch.Generator]:
        return {"mask": self.gen}

    def masks(self, views: int, n: int, gh: int, gw: int) -> torch.Tensor:
        """(views·n, gh·gw) bool, True = masked: the global batch's masks (one seed from the generator), this
        rank's block of every view."""
        p, rng = self.params, random.Random(int(torch.randint(0, 2 ** 62, (), generator=self.gen)))
        ratios = [rng.uniform(p.mask_ratio_min, p.mask_ratio_max) if rng.random() < p.mask_probability else 0.0
                  for _ in range(views * world_size() * n)]
        m = torch.from_numpy(np.stack([block_mask(rng, gh, gw, r * gh * gw).reshape(-1) for r in ratios]))
        return m.view(views, -1, gh * gw)[:, rank() * n:(rank() + 1) * n].reshape(views * n, gh * gw)

    def forward(self, views):
        if len(views) != 2:
            raise ValueError(f"ibot takes two global views, got {len(views)}")
        x, bb, p = torch.cat(views, 0), self.backbone, self.params
        (gh, gw), tb, th = bb.grid(x), self.teacher[0], self.teacher[1]
        mask = self.masks(2, len(views[0]), gh, gw).to(x.device)
        tokens = bb.embed(x)
        filler = self.mask_token.to(tokens.dtype) + sincos_2d(bb.dim, gh, gw, x.device, tokens.dtype)
        z = bb.encode(torch.where(mask[..., None], filler, tokens))
        feats = bb.pool(z, gh, gw)
        s1, s2 = self.head(feats).chunk(2)
        with torch.no_grad():
            tz = tb.encode(tb.embed(x))
            t1, t2 = th(tb.pool(tz, gh, gw)).chunk(2)
            t_patch = th(tz[:, 1:].flatten(0, 1)).view(len(x), gh * gw, -1)
        loss = dino_loss(s1, s2, t1, t2, self.center, p.student_temp, self.teacher_temp)
        patch = ibot_patch_loss(self.head(z[:, 1:][mask]), t_patch[mask], mask, self.patch_center, p.student_temp,
                                self.teacher_temp)
        loss = loss + p.patch_weight * patch
        if p.koleo_weight > 0:
            loss = loss + p.koleo_weight * sum(koleo_loss(gather(f)) for f in feats.chunk(2))
        if self.training:
            self.center.copy_(updated_center(self.center, torch.cat([t1, t2]), p.center_momentum))
            self.patch_center.copy_(updated_center(self.patch_center, t_patch.mean(1), p.patch_center_momentum))
        return loss
