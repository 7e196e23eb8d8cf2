"""Before the first step: threads, device and (under torchrun) the process group; the length of a run in steps and
its learning-rate schedule."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .. import distributed as D
from ..errors import TrainingError
from .optim import lr_at

if TYPE_CHECKING:
    from ..config import Config, TrainConfig


def setup_device(cfg: "Config") -> torch.device:
    """Set the thread count, initialise the process group when launched by torchrun with several processes, and
    return this process's device."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    distributed = D.launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = D.init_from_env(cfg.train.device) if distributed else torch.device(cfg.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is cuda but no CUDA device is available")
    return device


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512-BF16 or AMX-BF16 in /proc/cpuinfo's flags)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo = fh.read()
        except OSError:
            return False
    flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_amp(amp: bool | str, device: torch.device, cpuinfo: str | None = None) -> bool:
    """``train.amp`` resolved for ``device``: ``auto`` is on for CUDA and for CPUs with native bfloat16."""
    if amp != "auto":
        return bool(amp)
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16(cpuinfo))


def plan_steps(n_images: int, t: "TrainConfig", total_steps: int | None = None) -> tuple[int, int]:
    """(steps per epoch, total steps) for ``n_images`` at ``train.batch_size``: ``total_steps`` if given, else
    ``train.max_steps`` (which a ``train.time_budget`` is resolved to first), else ``train.epochs`` epochs."""
    steps_per_epoch = n_images // t.batch_size
    if steps_per_epoch == 0:
        raise TrainingError(f"train.batch_size {t.batch_size} is larger than the data set ({n_images} images)")
    if total_steps is None and t.max_steps is None and t.time_budget is not None:
        raise TrainingError(f"train.time_budget {t.time_budget} has not been turned into steps: resolve it first "
                            f"(selfsup.train.time_budget.resolve_budget sets train.max_steps)")
    total = total_steps or t.max_steps or max(1, int(round(t.epochs * steps_per_epoch)))
    return steps_per_epoch, total


@dataclass(frozen=True)
class Schedule:
    """How long a run trains and at which learning rate: ``total_steps`` of ``steps_per_epoch`` per epoch, a linear
    warm-up over ``warmup`` steps to ``base_lr``, then cosine decay to ``min_lr_ratio``·base_lr."""
    steps_per_epoch: int
    total_steps: int
    warmup: int
    base_lr: float
    min_lr_ratio: float

    def lr(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.warmup, self.base_lr, self.min_lr_ratio)

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch


def schedule_of(n_images: int, t: "TrainConfig", total_steps: int | None = None) -> Schedule:
    """The :class:`Schedule` of ``train`` for ``n_images`` (see :func:`plan_steps`): the warm-up is
    ``train.warmup_epochs`` (at most half the run), the base learning rate ``train.lr`` · batch size / 256."""
    steps_per_epoch, total = plan_steps(n_images, t, total_steps)
    warmup = min(int(round(t.warmup_epochs * steps_per_epoch)), total // 2)
    return Schedule(steps_per_epoch, total, warmup, t.lr * t.batch_size / 256, t.min_lr_ratio)
