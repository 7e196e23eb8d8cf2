"""What the trainer knows about a method: ``loss = method(views)`` and ``method.on_step(progress)``.

A method is an ``nn.Module`` that owns its backbone and heads. Its ``Params`` (a pydantic model, unknown keys
forbidden) are the hyper-parameters a config may set. ``recipe`` names its view recipe (symmetric/asymmetric).
"""
from __future__ import annotations

import copy
import math

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    proj_hidden: int = 512
    proj_dim: int = 128


class SSLMethod(nn.Module):
    name = "base"
    recipe = "symmetric"
    Params = MethodParams
    pure_forward = True  # forward has no side effects (it may be called again, e.g. by an attack)
    multi_crop = False  # takes 2 global views + local crops of another size (augment.local_crops > 0)
    uses_indices = False  # the trainer passes each image's index in the training set (per-sample state)
    uses_labels = False  # the trainer passes each image's label
    accepts_unlabelled = False  # with uses_labels: label −1 marks an unlabelled image

    def __init__(self, backbone: nn.Module, params: MethodParams):
        super().__init__()
        self.backbone = backbone
        self.params = params

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_joint(self, views: list[torch.Tensor], head: nn.Module) -> list[torch.Tensor]:
        """``head(backbone(v))`` for every view, computed as one concatenated batch (BatchNorm statistics over all
        views, as in SimCLR's reference implementation; one large convolution call is faster than several).
        Views of different sizes (multi-crop): the backbone once per resolution (the global views together, the
        local crops together), the head once over all of them (as DINO's MultiCropWrapper)."""
        groups = resolution_groups(views)
        if len(groups) == 1:
            z = head(self.backbone(torch.cat(views, 0)))
            return list(z.chunk(len(views), 0))
        order = [i for g in groups for i in g]
        feats = torch.cat([self.backbone(torch.cat([views[i] for i in g], 0)) for g in groups], 0)
        out: list[torch.Tensor] = [None] * len(views)  # type: ignore[list-item]
        for i, z in zip(order, head(feats).split([len(views[i]) for i in order], 0)):
            out[i] = z
        return out

    @classmethod
    def check_batch(cls, params: MethodParams, global_batch: int) -> str | None:
        """A one-line problem with training at ``global_batch`` (``train.batch_size``), or None."""
        return None

    @classmethod
    def check_model(cls, params: MethodParams, model) -> str | None:
        """A one-line problem with the encoder that the ``model`` config section (``ModelConfig``) describes, or
        None (e.g. a method that needs a ViT)."""
        return None

    @torch.no_grad()
    def on_step(self, progress: float) -> None:
        """Called after each optimiser step with ``progress`` = step / total_steps (EMA updates live here)."""


def resolution_groups(views: list[torch.Tensor]) -> list[list[int]]:
    """Indices of the views grouped by spatial size, groups in order of first appearance (multi-crop: the global
    views, then the local crops)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, v in enumerate(views):
        groups.setdefault(tuple(v.shape[2:]), []).append(i)
    return list(groups.values())


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Losses are computed in at least float32 (half-precision outputs of autocast are upcast; float64 stays)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy that receives no gradients (for EMA targets and momentum encoders)."""
    m = copy.deepcopy(module)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """θ_target ← m·θ_target + (1 − m)·θ_online (parameters; buffers are copied)."""
    for pt, po in zip(target.parameters(), online.parameters()):
        pt.mul_(m).add_(po.detach(), alpha=1 - m)
    for bt, bo in zip(target.buffers(), online.buffers()):
        bt.copy_(bo)


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's schedule: m = 1 − (1 − base)·(cos(π·progress) + 1)/2, from ``base`` to 1."""
    return 1 - (1 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2
