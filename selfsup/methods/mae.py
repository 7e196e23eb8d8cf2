"""MAE (He et al. 2022): masked autoencoders. Each image's L patches are shuffled by the argsort of uniform noise
(per sample); the first K = L − round(``mask_ratio``·L) are kept, the rest masked (m_i = 1). The ViT encoder sees
only the K visible patch tokens (+ CLS); a light decoder (Linear to ``decoder_dim``, a shared learned mask token
in every masked slot, fixed sin-cos decoder positions, ``decoder_depth`` blocks, LayerNorm, Linear to p·p·C pixels)
predicts every patch, and only the masked ones are scored:

loss = Σ_i m_i · ‖x̂_i − t_i‖² / (p²C) / Σ_i m_i,  t_i = (x_i − μ_i)/√(σ_i² + 10⁻⁶) with ``norm_pix_loss``, else x_i

x_i the pixels of patch i (in [0, 1]), μ_i / σ_i² their mean / unbiased variance (per-patch normalised targets).
The masks draw from the method's own seeded generator (``generators()``: checkpointed, so a resumed run masks as an
uninterrupted one); under DDP each rank draws the noise of the whole global batch and takes its block, so two
processes mask as one. Views: one (random resized crop + flip); with a two-view recipe each view is masked on its
own. Features for evaluation: the encoder on all patches (``model.vit_pool``: CLS or mean of patch tokens)."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ..distributed import rank, world_size
from ..models.vit import Block, init_transformer, sincos_2d
from .base import MethodParams, SSLMethod, upcast


def random_masking(noise: torch.Tensor, num_masked: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample shuffle: ``noise`` (N, L) → (ids_keep (N, K), ids_restore (N, L), mask (N, L) with 1 on
    the ``num_masked`` masked patches); the patches with the smallest noise are kept."""
    n, length = noise.shape
    keep = length - num_masked
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(n, length, device=noise.device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], ids_restore, torch.gather(mask, 1, ids_restore)


def patch_targets(patches: torch.Tensor, norm_pix: bool, eps: float = 1e-6) -> torch.Tensor:
    """t_i = (x_i − μ_i)/√(σ_i² + eps) over the pixels of each patch (σ² the unbiased variance, as MAE's code), or
    x_i."""
    if not norm_pix:
        return patches
    mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_i m_i · mean over pixels (x̂_i − t_i)² / Σ_i m_i: the masked patches only."""
    per_patch = (upcast(pred) - upcast(target)).pow(2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


class MAEParams(MethodParams):
    proj_hidden: int = Field(512, gt=0, description="unused by mae (a key every method has)")
    proj_dim: int = Field(128, gt=0, description="unused by mae (a key every method has)")
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="share of each image's patches masked, round(ratio·L) "
                                                            "(the paper: 0.75)")
    decoder_dim: int = Field(128, ge=4, multiple_of=4, description="decoder token width (the paper: 512 for "
                                                                   "ViT-L; divisible by 4 and decoder_heads)")
    decoder_depth: int = Field(2, ge=1, description="decoder transformer blocks (the paper: 8; 1 works nearly "
                                                    "as well for linear probing)")
    decoder_heads: int = Field(4, ge=1, description="decoder attention heads")
    norm_pix_loss: bool = Field(True, description="targets are each patch's pixels normalised by their own mean "
                                                  "and variance (the paper's better setting)")


class MAE(SSLMethod):
    name = "mae"
    recipe = "supervised"  # one view: random resized crop + flip
    Params = MAEParams
    pure_forward = False  # every forward draws new masks

    @classmethod
    def check_model(cls, params: MAEParams, model) -> str | None:
        if model.backbone != "vit":
            return f"model.backbone: mae needs the vit backbone (model.backbone: vit), not {model.backbone}"
        if params.decoder_dim % params.decoder_heads:
            return (f"method.decoder_dim ({params.decoder_dim}) is not divisible by method.decoder_heads "
                    f"({params.decoder_heads})")
        return None

    def __init__(self, backbone, params: MAEParams):
        super().__init__(backbone, params)
        d, dd = backbone.dim, params.decoder_dim
        pixels = backbone.patch * backbone.patch * backbone.in_channels
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(dd))  # 1-D: no weight decay, as the CLS token
        self.decoder_blocks = nn.ModuleList(Block(dd, params.decoder_heads) for _ in range(params.decoder_depth))
        self.decoder_norm = nn.LayerNorm(dd)
        self.decoder_pred = nn.Linear(dd, pixels)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            init_transformer(m)
        nn.init.normal_(self.mask_token, std=0.02)
        # the mask generator's seed: one draw of the torch RNG, seeded with the run's seed before the method is
        # built (so the same on every rank)
        self.gen = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, ())))

    def generators(self) -> dict[str, torch.Generator]:
        return {"mask": self.gen}

    def masks(self, views: int, n: int, length: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`random_masking` of ``views`` x ``n`` images of L patches, from uniform noise drawn for the global
        batch (all ranks); this rank keeps the rows of its images, its block of every view (the trainer's split of
        the global batch, :mod:`selfsup.data.loader`), so each image gets the mask it would get in one process."""
        noise = torch.rand(views, world_size() * n, length, generator=self.gen)
        noise = noise[:, rank() * n:(rank() + 1) * n].reshape(views * n, length).to(device)
        return random_masking(noise, min(max(round(self.params.mask_ratio * length), 1), length - 1))

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Encoder output (N, 1 + K, D) → predicted pixels of all L patches (N, L, p·p·C)."""
        y = self.decoder_embed(latent)
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.to(y.dtype).expand(n, length + 1 - y.shape[1], -1)
        patches = torch.cat([y[:, 1:], mask_tokens], 1)  # visible first, then masked: the shuffled order
        patches = torch.gather(patches, 1, ids_restore[..., None].expand(-1, -1, y.shape[2]))  # unshuffle
        patches = patches + sincos_2d(y.shape[2], *grid, y.device, y.dtype)
        z = torch.cat([y[:, :1], patches], 1)
        for blk in self.decoder_blocks:
            z = blk(z)
        return self.decoder_pred(self.decoder_norm(z))[:, 1:]

    def forward(self, views):
        x = torch.cat(views, 0)
        bb = self.backbone
        grid = bb.grid(x)
        tokens = bb.embed(x)  # (N, L, D), positions added
        n, length, d = tokens.shape
        ids_keep, ids_restore, mask = self.masks(len(views), len(views[0]), length, x.device)
        visible = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, d))
        pred = self.decode(bb.encode(visible), ids_restore, grid)
        target = patch_targets(bb.patchify(upcast(x)), self.params.norm_pix_loss)
        return masked_mse(pred, target, mask)
