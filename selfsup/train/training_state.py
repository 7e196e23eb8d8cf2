"""What a training checkpoint holds and how a run is restored from it: the method's weights and buffers (with the
strategy's trainable module, if any, under ``strategy_module.``), the optimiser's state and every random generator
of every rank (:class:`RandomState`), in the run's checkpoint folder."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import distributed as D
from .checkpoint import Checkpoint, latest_checkpoint, save_checkpoint
from .random_state import RandomState

STRATEGY_PREFIX = "strategy_module."  # the strategy's module's keys in a checkpoint's model state


def trainable(method: nn.Module, strategy_module: nn.Module | None) -> nn.Module:
    """What the optimiser trains: the method, and the strategy's module when it has one."""
    return method if strategy_module is None else nn.ModuleList([method, strategy_module])


class TrainingState:
    """The state a run saves in ``ckpt_dir`` and resumes from: ``method`` + ``strategy_module`` (trained together
    as :func:`trainable`), ``optimizer`` and ``rng``."""

    def __init__(self, method: nn.Module, strategy_module: nn.Module | None, optimizer: torch.optim.Optimizer,
                 rng: RandomState, ckpt_dir: Path):
        self.method, self.strategy_module, self.optimizer, self.rng = method, strategy_module, optimizer, rng
        self.owner = trainable(method, strategy_module)
        self.ckpt_dir = ckpt_dir

    def model_state(self) -> dict[str, torch.Tensor]:
        """The method's state dict, then the strategy's module's under ``strategy_module.``."""
        state = dict(self.method.state_dict())
        if self.strategy_module is not None:
            state.update({f"{STRATEGY_PREFIX}{k}": v for k, v in self.strategy_module.state_dict().items()})
        return state

    def load_model_state(self, saved: dict[str, torch.Tensor]) -> None:
        """The inverse of :meth:`model_state` (the keys mapped to those of :func:`trainable`'s ModuleList)."""
        if self.strategy_module is None:
            self.owner.load_state_dict(saved)
            return
        self.owner.load_state_dict({
            **{f"0.{k}": v for k, v in saved.items() if not k.startswith(STRATEGY_PREFIX)},
            **{f"1.{k[len(STRATEGY_PREFIX):]}": v for k, v in saved.items() if k.startswith(STRATEGY_PREFIX)}})

    def restore(self, ck: Checkpoint, rank: int) -> int:
        """Load ``ck`` (weights, optimiser, this rank's generators); the step it was saved at."""
        self.load_model_state(ck.model)
        if ck.optimizer is not None:
            self.optimizer.load_state_dict(ck.optimizer)
        self.rng.restore(ck.extra, rank)
        return int(ck.meta["step"])

    def save(self, step: int, meta: dict, keep: int) -> None:
        """Checkpoint ``step``: every rank's generators are gathered, the main process writes (keeping the newest
        ``keep`` checkpoints)."""
        states = self.rng.states()
        per_rank = [states]
        world = D.world_size()
        if world > 1:
            per_rank = [None] * world
            torch.distributed.all_gather_object(per_rank, states)
        if D.is_main():
            save_checkpoint(self.ckpt_dir, step, self.model_state(), self.optimizer.state_dict(),
                            {f"{k}@rank{r}": v for r, s in enumerate(per_rank) for k, v in s.items()},
                            meta, keep=keep)

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint folder, for messages."""
        return latest_checkpoint(self.ckpt_dir)
