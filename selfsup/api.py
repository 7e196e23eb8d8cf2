"""The Python API: ``pretrain(config)``, ``load(run_dir)`` → backbone ``nn.Module``, ``embed(model, images)``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import Config, load_config
from .errors import CheckpointError
from .models import build_backbone
from .train.checkpoint import atomic_write_text


def pretrain(config, overrides: list[str] | None = None, resume: bool = False, progress: bool = True,
             evaluate: bool = True):
    """Pre-train from a YAML path, a dict or a :class:`Config`; returns a RunResult (``.run_dir``...)."""
    from .train.loop import pretrain as _pretrain

    return _pretrain(config, overrides, resume=resume, progress=progress, evaluate=evaluate)


def save_backbone(run_dir: Path, backbone: nn.Module, cfg: Config, in_channels: int) -> None:
    """``backbone.safetensors`` + ``backbone.json`` (what is needed to rebuild it), written atomically."""
    from .train.loop import backbone_kwargs

    run_dir = Path(run_dir)
    tmp = run_dir / ".backbone.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}, str(tmp))
    tmp.replace(run_dir / "backbone.safetensors")
    kw = backbone_kwargs(cfg)
    kw = {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}
    atomic_write_text(run_dir / "backbone.json", json.dumps(
        {"backbone": cfg.model.backbone, "in_channels": in_channels, "kwargs": kw,
         "feat_dim": backbone.feat_dim}, indent=1))


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The trained backbone of a run, as an ``nn.Module`` in eval mode (inputs: float images in [0, 1])."""
    run_dir = Path(run_dir)
    meta_path, w_path = run_dir / "backbone.json", run_dir / "backbone.safetensors"
    if not meta_path.exists() or not w_path.exists():
        raise CheckpointError(f"{run_dir} holds no trained backbone (backbone.json / backbone.safetensors); "
                              f"is it a finished selfsup run?")
    try:
        meta = json.loads(meta_path.read_text())
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["kwargs"].items()}
        model = build_backbone(meta["backbone"], meta["in_channels"], **kwargs)
        model.load_state_dict(load_file(str(w_path)))
    except (KeyError, json.JSONDecodeError, SafetensorError, RuntimeError, OSError) as e:
        raise CheckpointError(f"cannot load the backbone of {run_dir}: {e}") from None
    return model.to(device).eval()


def embed(model: nn.Module | str | Path, images, batch_size: int = 1024, device: str | torch.device = "cpu",
          channels_last: bool = True) -> torch.Tensor:
    """Features of ``images`` (uint8 array/tensor N×H×W, N×C×H×W, or float in [0, 1]) from a backbone or run dir."""
    from .evaluate.probes import extract_features

    if not isinstance(model, nn.Module):
        model = load(model, device)
    x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.is_floating_point():
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return extract_features(model.to(device), x, batch_size, device, channels_last)


__all__ = ["pretrain", "load", "embed", "load_config", "save_backbone"]
