"""One optimiser step of the training loop, on this rank's share of a batch: the strategy's batch → float images →
the method's inputs → views → ``loss = method(views)`` (+ the strategy's penalty) → NaN guard → backward (+ gradient
clipping) → optimiser step → ``method.on_step(progress)``. It knows nothing about the method it runs beyond what
the method declares (``uses_indices``, ``uses_labels``, ``accepts_unlabelled``)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..augment import to_float
from ..data import BatchComposer
from ..errors import TrainingError
from ..methods import SSLMethod
from .checkpoint import latest_checkpoint
from .setup import Schedule, use_amp
from .strategy import Strategy
from .training_state import TrainingState

if TYPE_CHECKING:
    from ..config import TrainConfig


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class MethodInputs:
    """The keyword inputs a method declares it takes besides its views: ``idx`` (``uses_indices``: each image's
    index in the training set, shifted by ``index_offset``; −1, an image not from the set, stays −1) and ``labels``
    (``uses_labels``: from ``batches``; −1 marks an unlabelled image, which only ``accepts_unlabelled`` allows)."""

    def __init__(self, method: SSLMethod, batches: BatchComposer, index_offset: int, device: torch.device):
        self.method, self.batches, self.index_offset, self.device = method, batches, index_offset, device

    def __call__(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if self.method.uses_indices:
            out["idx"] = torch.where(ids >= 0, ids + self.index_offset, ids).to(self.device)
        if self.method.uses_labels:
            labels = self.batches.labels_of(ids)  # -1: unlabelled
            if labels is None or ((labels < 0).any() and not self.method.accepts_unlabelled):
                raise TrainingError(f"{type(self.method).__name__} needs a label for every training image "
                                    f"(method suncet accepts unlabelled ones)")
            out["labels"] = labels.to(self.device)
        return out


def stop_unless_finite(total: torch.Tensor, step: int, epoch: float, ckpt_dir: Path) -> None:
    """A TrainingError naming the last good checkpoint when the loss of ``step`` is NaN or infinite."""
    if not torch.isfinite(total.detach()).all():
        raise TrainingError(f"loss became {float(total.detach())} at step {step} (epoch "
                            f"{epoch:.2f}); stopped. Last good checkpoint: "
                            f"{latest_checkpoint(ckpt_dir) or 'none'}. Try a lower train.lr or "
                            f"train.grad_clip")


@dataclass
class StepOutput:
    """What a step computed: the method's loss, the strategy's penalty (None: none) and the learning rate."""
    loss: torch.Tensor
    penalty: torch.Tensor | None
    lr: float


class StepRunner:
    """Runs one optimiser step (``__call__``) of ``state.method`` (called through ``model``: the method itself or
    its DDP / compiled wrapper) with the strategy ``strategy``."""

    def __init__(self, state: TrainingState, model: nn.Module, strategy: Strategy, recipe, inputs: MethodInputs,
                 schedule: Schedule, t: "TrainConfig"):
        self.state, self.model, self.strategy, self.recipe, self.inputs = state, model, strategy, recipe, inputs
        self.schedule, self.t = schedule, t
        self.device = inputs.device
        self.amp = use_amp(t.amp, self.device)

    def __call__(self, step: int, images: torch.Tensor, idx: torch.Tensor) -> StepOutput:
        """Step ``step`` on the uint8 ``images`` of this rank's share and their indices in the training set."""
        method, gens = self.state.method, self.state.rng.gens
        images, ids = self.strategy.batch(images, idx, gens["mix"])
        x = to_float(images.to(self.device, non_blocking=True), self.t.channels_last)
        method_inputs = self.inputs(ids)
        lr = self.schedule.lr(step)
        for gr in self.state.optimizer.param_groups:
            gr["lr"] = lr
        with torch.no_grad():
            views = self.recipe(x, gens["aug"])
        if self.t.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with autocast(self.device, self.amp), self.strategy.watching(method):
            loss = self.model(views, **method_inputs)
            penalty = self.strategy.penalty(method, views)
        total = loss if penalty is None else loss + penalty
        stop_unless_finite(total, step, self.schedule.epoch(step), self.state.ckpt_dir)
        self._optimise(total)
        method.on_step((step + 1) / self.schedule.total_steps)
        return StepOutput(loss, penalty, lr)

    def _optimise(self, total: torch.Tensor) -> None:
        optimizer = self.state.optimizer
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.t.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.state.owner.parameters(), self.t.grad_clip)
        optimizer.step()
