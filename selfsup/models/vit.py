"""A small Vision Transformer (Dosovitskiy et al. 2021) for 28x28 / 32x32 images, on
``torch.nn.functional.scaled_dot_product_attention``.

x → Normalize → Conv(p×p, stride p) → L = (H/p)·(W/p) patch tokens + fixed 2-D sin-cos position embeddings
(MAE / MoCo v3) → [CLS] prepended → ``depth`` pre-norm blocks → LayerNorm → features: the CLS token (``pool="cls"``),
the mean of the patch tokens (``pool="mean"``), both ``feat_dim`` = ``dim``, or the patch tokens average-pooled to a
``grid`` x ``grid`` map and flattened (``pool="grid"``, ``feat_dim`` = ``dim``·grid², the CNN's spatial readout).

A block: z ← z + Attn(LN(z)), z ← z + MLP(LN(z)); Attn = softmax(Q·Kᵀ/√d_head)·V per head, MLP = Linear-GELU-Linear
(hidden ``mlp_ratio``·dim). The position table depends only on the patch grid, so it is computed from the input's
size (any H, W divisible by p) and is not a weight. Masked-image methods use the pieces: ``patchify`` (pixels of each
patch), ``embed`` (patch tokens with position, no CLS), ``encode`` (CLS + blocks + norm on any subset of tokens)
and ``pool``. The CLS token is stored 1-D so the optimiser's "no weight decay on 1-D parameters" rule leaves it
undecayed, as MAE / timm do.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .normalize import InputNorm, Normalize


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(len(pos), dim): [sin(pos·ω_k), cos(pos·ω_k)], ω_k = 1/10000^(2k/dim), k < dim/2 (Vaswani et al. 2017)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2))
    out = pos.to(torch.float64)[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], 1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(grid_h·grid_w, dim) fixed 2-D position embeddings, row-major: half the channels encode the row, half the
    column (MAE's ``get_2d_sincos_pos_embed``; ``dim`` divisible by 4)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, device=device).repeat(grid_h)
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], 1).to(dtype)


class Attention(nn.Module):
    """Multi-head self-attention: one Linear to Q, K, V; ``scaled_dot_product_attention``; output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"the ViT width {dim} is not divisible by its {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (n, heads, l, d_head)
        return self.proj(out.transpose(1, 2).reshape(n, length, d))


class Block(nn.Module):
    """Pre-norm transformer block: z + Attn(LN(z)), then z + MLP(LN(z))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_transformer(module: nn.Module) -> None:
    """MAE's initialisation: Xavier-uniform Linear weights (the patch convolution as the Linear it is), zero biases,
    LayerNorm 1 / 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class ViTSpec:
    """A ViT's shape: ``patch`` side (px), token width ``dim``, ``depth`` blocks of ``heads`` heads, MLP hidden
    ``mlp_ratio``·dim, readout ``pool`` (cls, mean or grid: average-pooled to ``grid`` x ``grid``)."""
    patch: int = 4
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    pool: str = "cls"
    grid: int = 3


class ViT(nn.Module):
    """A small ViT. ``spec.patch`` must divide the image's height and width (4: 49 patches at 28x28, 64 at 32x32)."""

    def __init__(self, in_channels: int = 1, spec: ViTSpec = ViTSpec(), norm: InputNorm = InputNorm()):
        super().__init__()
        patch, dim, heads, pool, grid = spec.patch, spec.dim, spec.heads, spec.pool, spec.grid
        if pool not in ("cls", "mean", "grid"):
            raise ValueError(f"unknown ViT pooling {pool!r} (choose cls, mean or grid)")
        self.normalize = Normalize(norm.mean, norm.std)
        self.patch, self.in_channels, self.pool_mode, self.pool_grid = patch, in_channels, pool, grid
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList(Block(dim, heads, spec.mlp_ratio) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(dim)
        self.dim = dim  # the token width
        self.feat_dim = dim * grid * grid if pool == "grid" else dim
        init_transformer(self)
        nn.init.normal_(self.cls_token, std=0.02)
        sincos_2d(dim, 1, 1)  # a width the position table cannot encode fails here, not at the first batch

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        """(H/p, W/p), or a ValueError when the patch does not divide the image."""
        h, w = x.shape[-2:]
        if h % self.patch or w % self.patch:
            raise ValueError(f"ViT patch size {self.patch} does not divide the {h}x{w} images (choose "
                             f"model.vit_patch dividing both, e.g. 4 or 7 at 28x28, 4 or 8 at 32x32)")
        return h // self.patch, w // self.patch

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → (N, L, p·p·C): the pixels of each patch, patches row-major, within a patch (row, column,
        channel) as MAE's ``patchify``."""
        gh, gw = self.grid(x)
        n, c, p = x.shape[0], x.shape[1], self.patch
        return x.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(n, gh * gw, p * p * c)

    def unpatchify(self, patches: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """The inverse of :meth:`patchify` for a ``grid_h`` x ``grid_w`` grid of patches."""
        n, p = patches.shape[0], self.patch
        c = patches.shape[2] // (p * p)
        return patches.reshape(n, grid_h, grid_w, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(
            n, c, grid_h * p, grid_w * p)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images in [0, 1] → (N, L, dim) patch tokens plus their position embeddings (no CLS)."""
        gh, gw = self.grid(x)
        tokens = self.patch_embed(self.normalize(x)).flatten(2).transpose(1, 2)
        return tokens + sincos_2d(self.dim, gh, gw, tokens.device, tokens.dtype)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, K, dim) tokens (all patches or a subset) → (N, 1 + K, dim): CLS prepended (its position embedding is
        0), the blocks, the final LayerNorm."""
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        z = torch.cat([cls, tokens], 1)
        for blk in self.blocks:
            z = blk(z)
        return self.norm(z)

    def pool(self, z: torch.Tensor, grid_h: int, grid_w: int, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """The features of :meth:`encode`'s output on a ``grid_h`` x ``grid_w`` grid of patches: the CLS token, the
        mean of the patch tokens, or (``grid``) the patch tokens average-pooled to ``grid`` x ``grid`` cells and
        flattened channel by channel, as the CNN's ``pool`` readout. ``ids_keep`` (N, K): the grid index of each of
        the K patch tokens when only those were encoded (masked-image methods); ``grid`` then averages the tokens
        present in each cell (0 where none is)."""
        if self.pool_mode == "cls":
            return z[:, 0]
        if self.pool_mode == "mean":
            return z[:, 1:].mean(1)
        n, d, tokens = z.shape[0], z.shape[2], z[:, 1:]
        if ids_keep is None:
            maps = tokens.transpose(1, 2).reshape(n, d, grid_h, grid_w)
            return F.adaptive_avg_pool2d(maps, self.pool_grid).flatten(1)
        full = tokens.new_zeros(n, grid_h * grid_w, d + 1)
        full = full.scatter(1, ids_keep[..., None].expand(-1, -1, d + 1), F.pad(tokens, (0, 1), value=1.0))
        sums = F.adaptive_avg_pool2d(full.transpose(1, 2).reshape(n, d + 1, grid_h, grid_w), self.pool_grid)
        return (sums[:, :d] / sums[:, d:].clamp_min(1e-12)).flatten(1)  # the last channel: the share present

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encode(self.embed(x)), *self.grid(x))
