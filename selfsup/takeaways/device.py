"""Which torch device a command that uses a trained run (embed, export) runs on: the one the user names, which must
exist here, else the run's ``train.device`` when it exists here, else the CPU."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import load_config
from ..errors import ConfigError, SelfsupError
from ..rundir import RunDir


def device_available(device: torch.device) -> bool:
    """Whether ``device`` exists on this machine (a CUDA index below the device count, MPS when built in)."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    return False


def parse_device(name: str) -> torch.device:
    try:
        return torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a torch device (cpu, cuda, cuda:N, mps)") from None


def resolve_device(requested: str | torch.device | None, run_dir: str | Path | None = None) -> torch.device:
    """``requested`` (an error when it does not exist here); without one, the run's ``train.device`` from its
    ``config.yaml`` when that exists here, else the CPU."""
    if requested is not None:
        device = requested if isinstance(requested, torch.device) else parse_device(str(requested))
        if not device_available(device):
            raise ConfigError(f"device {str(requested)!r} is not available on this machine"
                              + (" (no CUDA device)" if device.type == "cuda" and not torch.cuda.is_available()
                                 else ""))
        return device
    cfg_path = RunDir(run_dir).config if run_dir is not None else None
    if cfg_path is None or not cfg_path.exists():
        return torch.device("cpu")
    try:
        device = parse_device(load_config(cfg_path).train.device)
    except SelfsupError:  # an unreadable config only costs the default; the data it names fails loudly elsewhere
        return torch.device("cpu")
    return device if device_available(device) else torch.device("cpu")
