"""I-JEPA (Assran et al. 2023): predict, from one context block of an image, the representations of several target
blocks of the same image, in the space of an EMA target encoder. No augmentation beyond a crop: one view
(``recipe = "supervised"``: random resized crop + flip; the paper's setting is crop scale 0.3-1 and no flip).

Masks, on the H x W patch grid (facebookresearch/ijepa src/masks/multiblock.py:55-170): one target-block size per
batch (area ``target_scale``·L, aspect ratio in ``target_aspect``) and one context-block size (``context_scale``,
square); per image ``num_targets`` target blocks and one context block with every target patch removed from it. A
context left with fewer than ``min_keep`` patches is redrawn; after 20 failures one target's exclusion is dropped
(so the loop ends on any grid). Every image's context is cut to the batch's smallest (the first patches in
row-major order), so the batch stacks. Departures: a block may touch the grid's last row / column (the reference's
``randint(0, H − h)`` cannot) and scale and aspect are drawn independently (the reference reuses one draw). Each
step draws one seed from the method's generator (checkpointed); under DDP every rank draws the global batch's masks
and takes its own, so two processes mask as one.

Target (src/train.py:295-303): the target encoder (EMA of the backbone, θ̄ ← m·θ̄ + (1 − m)·θ, m linear from
``base_momentum`` to 1, src/train.py:228) encodes every patch; its patch tokens, layer-normalised without affine,
at each target block. Context: the backbone encodes only the context patches (with its CLS token). Predictor
(src/models/vision_transformer.py:285-326): Linear to ``pred_dim``, + fixed sin-cos positions at the context
positions (the CLS token's: 0), then for each target block the learned mask token + the target positions
appended, ``pred_depth`` blocks, LayerNorm, Linear back to the encoder width; its outputs at the mask tokens are the
predictions. loss = mean over elements of smooth-L1 (β = 1, as src/train.py:310-313) or of the squared error (the
paper's L2; ``loss: mse``)."""
from __future__ import annotations

import math
import random
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..distributed import rank, world_size
from ..models.vit import Block, init_transformer, sincos_2d
from .base import MethodParams, SSLMethod, ema_update, frozen_copy, upcast


def block_size(rng: random.Random, gh: int, gw: int, scale: tuple[float, float],
               aspect: tuple[float, float]) -> tuple[int, int]:
    """(h, w) of a block of about ``scale``·L patches and aspect h/w in ``aspect``, 1 ≤ h < H, 1 ≤ w < W."""
    keep = int(gh * gw * rng.uniform(*scale))
    ar = rng.uniform(*aspect)
    h, w = round(math.sqrt(keep * ar)), round(math.sqrt(keep / ar))
    return min(max(h, 1), max(gh - 1, 1)), min(max(w, 1), max(gw - 1, 1))


def place(rng: random.Random, gh: int, gw: int, h: int, w: int) -> set[int]:
    """The row-major patch indices of an h x w block at a uniformly drawn position."""
    top, left = rng.randint(0, gh - h), rng.randint(0, gw - w)
    return {r * gw + c for r in range(top, top + h) for c in range(left, left + w)}


def multi_block_masks(rng: random.Random, images: int, gh: int, gw: int, p: IJEPAParams
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(context ids (images, Kc), target ids (images, num_targets, Kt)), both sorted row-major."""
    t_size = block_size(rng, gh, gw, tuple(p.target_scale), tuple(p.target_aspect))
    c_size = block_size(rng, gh, gw, tuple(p.context_scale), (1.0, 1.0))
    contexts, targets = [], []
    for _ in range(images):
        tgt = [place(rng, gh, gw, *t_size) for _ in range(p.num_targets)]
        dropped, tries = 0, 0
        while True:
            ctx = place(rng, gh, gw, *c_size).difference(*tgt[:len(tgt) - dropped])
            if len(ctx) >= p.min_keep or dropped >= len(tgt):
                break
            tries += 1
            if tries % 20 == 0:
                dropped += 1
        contexts.append(sorted(ctx))
        targets.append([sorted(t) for t in tgt])
    kc = min(len(c) for c in contexts)
    return torch.tensor([c[:kc] for c in contexts]), torch.tensor(targets)


class Predictor(nn.Module):
    """The narrow transformer that maps context tokens + mask tokens at target positions to the target tokens."""

    def __init__(self, dim: int, pred_dim: int, depth: int, heads: int):
        super().__init__()
        self.embed = nn.Linear(dim, pred_dim)
        self.mask_token = nn.Parameter(torch.zeros(pred_dim))  # 1-D: no weight decay
        self.blocks = nn.ModuleList(Block(pred_dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(pred_dim)
        self.proj = nn.Linear(pred_dim, dim)
        init_transformer(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, z: torch.Tensor, ctx: torch.Tensor, tgt: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``z`` (N, 1 + Kc, D) the encoded CLS + context tokens at ``ctx`` (N, Kc) → (N, M, Kt, D) predictions
        at the M target blocks ``tgt`` (N, M, Kt)."""
        y = self.embed(z)
        pos = sincos_2d(y.shape[2], *grid, y.device, y.dtype)
        y = y + torch.cat([torch.zeros_like(pos[:1]).expand(len(y), 1, -1), pos[ctx]], 1)
        n, m, kt = tgt.shape
        queries = (self.mask_token.to(y.dtype) + pos[tgt]).view(n * m, kt, -1)
        u = torch.cat([y.repeat_interleave(m, 0), queries], 1)
        for blk in self.blocks:
            u = blk(u)
        return self.proj(self.norm(u[:, -kt:])).view(n, m, kt, -1)


class IJEPAParams(MethodParams):
    proj_hidden: int = Field(512, gt=0, description="unused by ijepa (a key every method has)")
    proj_dim: int = Field(128, gt=0, description="unused by ijepa (a key every method has)")
    pred_dim: int = Field(96, ge=4, multiple_of=4, description="predictor width (narrower than the encoder; the "
                                                               "paper: 384 for ViT-H; divisible by pred_heads)")
    pred_depth: int = Field(2, ge=1, description="predictor transformer blocks (the paper: 12)")
    pred_heads: int = Field(4, ge=1, description="predictor attention heads")
    num_targets: int = Field(4, ge=1, description="target blocks per image (the paper: 4)")
    target_scale: tuple[float, float] = Field((0.15, 0.2), description="a target block's share of the patches")
    target_aspect: tuple[float, float] = Field((0.75, 1.5), description="a target block's aspect ratio h/w range")
    context_scale: tuple[float, float] = Field((0.85, 1.0), description="the context block's share of the patches "
                                                                        "(before the targets are removed)")
    min_keep: int = Field(4, ge=1, description="fewest context patches before a target's exclusion is dropped")
    loss: Literal["smooth_l1", "mse"] = Field("smooth_l1", description="smooth_l1 (the authors' code) or mse")
    base_momentum: float = Field(0.996, ge=0, le=1, description="target encoder EMA momentum at step 0 (linear "
                                                                "to 1)")


class IJEPA(SSLMethod):
    name = "ijepa"
    recipe = "supervised"  # one view: random resized crop + flip
    Params = IJEPAParams
    pure_forward = False  # every forward draws new masks

    @classmethod
    def check_model(cls, params: IJEPAParams, model) -> str | None:
        if model.backbone != "vit":
            return f"model.backbone: ijepa needs the vit backbone (model.backbone: vit), not {model.backbone}"
        if params.pred_dim % params.pred_heads:
            return f"method.pred_dim ({params.pred_dim}) is not divisible by method.pred_heads ({params.pred_heads})"
        for key in ("target_scale", "context_scale", "target_aspect"):
            lo, hi = getattr(params, key)
            if not 0 < lo <= hi or (key != "target_aspect" and hi > 1):
                return f"method.{key} must satisfy 0 < low <= high" + ("" if key == "target_aspect" else " <= 1")
        return None

    def __init__(self, backbone, params: IJEPAParams):
        super().__init__(backbone, params)
        self.predictor = Predictor(backbone.dim, params.pred_dim, params.pred_depth, params.pred_heads)
        self.target = frozen_copy(backbone)
        self.gen = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, ())))  # as MAE's mask generator

    def generators(self) -> dict[str, torch.Generator]:
        return {"mask": self.gen}

    def masks(self, views: int, n: int, gh: int, gw: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`multi_block_masks` of the global batch (one seed from the generator), this rank's block of every
        view."""
        rng = random.Random(int(torch.randint(0, 2 ** 62, (), generator=self.gen)))
        ctx, tgt = multi_block_masks(rng, views * world_size() * n, gh, gw, self.params)
        mine = torch.arange(views * world_size() * n).view(views, -1)[:, rank() * n:(rank() + 1) * n].reshape(-1)
        return ctx[mine], tgt[mine]

    def forward(self, views):
        x, bb = torch.cat(views, 0), self.backbone
        grid = bb.grid(x)
        ctx, tgt = (m.to(x.device) for m in self.masks(len(views), len(views[0]), *grid))
        with torch.no_grad():
            h = self.target.encode(self.target.embed(x))[:, 1:]
            h = F.layer_norm(upcast(h), h.shape[-1:])
            n = len(x)
            targets = h[torch.arange(n, device=x.device)[:, None, None], tgt]  # (N, M, Kt, D)
        tokens = bb.embed(x)
        z = bb.encode(tokens[torch.arange(n, device=x.device)[:, None], ctx])
        pred = upcast(self.predictor(z, ctx, tgt, grid))
        return F.smooth_l1_loss(pred, targets) if self.params.loss == "smooth_l1" else F.mse_loss(pred, targets)

    @torch.no_grad()
    def on_step(self, progress):
        base = self.params.base_momentum
        ema_update(self.target, self.backbone, base + (1 - base) * min(max(progress, 0.0), 1.0))
