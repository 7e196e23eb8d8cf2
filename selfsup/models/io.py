"""Build a backbone from the ``model`` section of a config, and save / load a trained one.

A run directory's backbone is ``backbone.safetensors`` (weights) + ``backbone.json`` (what rebuilds it), both
written atomically; loading never unpickles anything.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..atomic import atomic_save_tensors
from ..errors import CheckpointError
from ..rundir import BackboneRecord, RunDir, read_backbone_record, write_backbone_record
from .backbones import build_backbone, resolve_stem

if TYPE_CHECKING:
    from ..config import ModelConfig


def backbone_kwargs(model: "ModelConfig", image_size: int | None = None) -> dict:
    """The keyword arguments of :func:`build_backbone` that the ``model`` section sets; ``stem: auto`` (ResNet and
    CNN) becomes cifar or imagenet from ``image_size`` (the image side in pixels; unknown: cifar)."""
    if model.backbone == "cnn":
        return {"widths": tuple(model.widths), "convs_per_stage": model.convs_per_stage, "pool": model.pool,
                "downsample": model.downsample, "stem": resolve_stem(model.stem, image_size)}
    if model.backbone == "vit":
        return {"patch": model.vit_patch, "dim": model.vit_dim, "depth": model.vit_depth, "heads": model.vit_heads,
                "mlp_ratio": model.vit_mlp_ratio, "pool": model.vit_pool, "grid": model.vit_grid}
    return {"width": model.width, "stem": resolve_stem(model.stem, image_size),
            "zero_init_residual": model.zero_init_residual}


def backbone_from_config(model: "ModelConfig", in_channels: int, image_size: int | None = None) -> nn.Module:
    """A fresh backbone for images of ``in_channels`` channels and side ``image_size`` (which picks a ResNet's stem
    under ``stem: auto``)."""
    return build_backbone(model.backbone, in_channels, **backbone_kwargs(model, image_size))


def readout_kwargs(model: "ModelConfig", kwargs: dict) -> dict:
    """``kwargs`` (of :func:`backbone_kwargs`) with ``model.readout_pool`` applied: the spatial grid the saved
    backbone's features are pooled to. Pooling has no weights, so the trained weights fit either readout."""
    if model.readout_pool is None:
        return kwargs
    if model.backbone == "cnn":
        return {**kwargs, "pool": model.readout_pool}
    return {**kwargs, "pool": "grid", "grid": model.readout_pool}


def readout_backbone(backbone: nn.Module, model: "ModelConfig", in_channels: int,
                     image_size: int | None = None) -> nn.Module:
    """``backbone``'s weights read out as the saved backbone reads them (``model.readout_pool``): ``backbone`` itself
    when that is not set, else a copy built at the readout grid, on the same device and in the same mode, so that a
    probe during training (the kNN monitor, a stream's per-chunk evaluation) scores the features users take away.
    The copy's construction leaves the global random state untouched (a run reads the same random numbers with and
    without it)."""
    if model.readout_pool is None:
        return backbone
    with torch.random.fork_rng(devices=[]):
        out = build_backbone(model.backbone, in_channels, **readout_kwargs(model, backbone_kwargs(model, image_size)))
    out.load_state_dict(backbone.state_dict())
    return out.to(next(backbone.parameters()).device).train(backbone.training)


def save_backbone(run_dir: str | Path, backbone: nn.Module, model: "ModelConfig", in_channels: int,
                  image_size: int | None = None) -> None:
    """``backbone.safetensors`` + ``backbone.json`` in ``run_dir`` (with the image size it was trained on, which
    ``embed`` / ``export`` resize a new collection to). The saved features are those of ``model.readout_pool`` when
    it is set, else the ones pre-training used."""
    run = RunDir(run_dir)
    atomic_save_tensors(run.backbone_tensors, backbone.state_dict())
    kw = readout_kwargs(model, backbone_kwargs(model, image_size))
    if hasattr(backbone, "stem_kind"):  # the stem the ResNet was built with is what its weights fit
        kw["stem"] = backbone.stem_kind
    feat_dim = (backbone.feat_dim if model.readout_pool is None
                else build_backbone(model.backbone, in_channels, **kw).feat_dim)
    kw = {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}
    write_backbone_record(run, BackboneRecord(
        backbone=model.backbone, in_channels=in_channels, image_size=image_size, kwargs=kw,
        feat_dim=feat_dim))


def backbone_info(run_dir: str | Path) -> BackboneRecord:
    """``backbone.json`` of a run: backbone, in_channels, image_size (None for runs saved before it was recorded),
    kwargs, feat_dim."""
    run = RunDir(run_dir)
    path = run.backbone_info
    if not path.exists():
        raise CheckpointError(f"{run_dir} holds no trained backbone ({RunDir.BACKBONE_INFO}); is it a finished "
                              f"selfsup run?")
    try:
        return read_backbone_record(run)
    except (json.JSONDecodeError, OSError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def load_backbone(run_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The trained backbone of a run, as an ``nn.Module`` in eval mode (inputs: float images in [0, 1])."""
    run = RunDir(run_dir)
    meta_path, w_path = run.backbone_info, run.backbone_tensors
    if not meta_path.exists() or not w_path.exists():
        raise CheckpointError(f"{run_dir} holds no trained backbone ({RunDir.BACKBONE_INFO} / "
                              f"{RunDir.BACKBONE_TENSORS}); is it a finished selfsup run?")
    try:
        meta = read_backbone_record(run)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["kwargs"].items()}
        model = build_backbone(meta["backbone"], meta["in_channels"], **kwargs)
        model.load_state_dict(load_file(str(w_path)))
    except (KeyError, json.JSONDecodeError, SafetensorError, RuntimeError, OSError) as e:
        raise CheckpointError(f"cannot load the backbone of {run_dir}: {e}") from None
    return model.to(device).eval()
