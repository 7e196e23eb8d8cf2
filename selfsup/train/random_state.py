"""Every random generator a training run draws from — augmentation, replay mixing, the global torch generator
(and CUDA's), and those a method or a strategy owns (``generators()``) — saved in each checkpoint and restored per
rank, so a resumed run draws exactly the numbers of an uninterrupted one."""
from __future__ import annotations

import torch


class RandomState:
    """The run's named generators (``gens``) plus torch's global ones, saved and restored per rank."""

    def __init__(self, gens: dict[str, torch.Generator]):
        self.gens = gens

    def states(self) -> dict[str, torch.Tensor]:
        out = {f"rng.{k}": g.get_state() for k, g in self.gens.items()}
        out["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["rng.cuda"] = torch.cuda.get_rng_state()
        return out

    def restore(self, saved: dict[str, torch.Tensor], rank: int) -> None:
        for k, g in self.gens.items():
            s = saved_for_rank(saved, f"rng.{k}", rank)
            if s is not None:
                g.set_state(s)
        if (s := saved_for_rank(saved, "rng.torch", rank)) is not None:
            torch.set_rng_state(s)
        if (s := saved_for_rank(saved, "rng.cuda", rank)) is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(s)


def saved_for_rank(saved: dict[str, torch.Tensor], key: str, rank: int) -> torch.Tensor | None:
    """Rank ``rank``'s saved state of ``key``, else rank 0's (a run resumed on more processes), else None."""
    return saved.get(f"{key}@rank{rank}", saved.get(f"{key}@rank0"))


def generators_of(obj) -> dict[str, torch.Generator]:
    """The generators a method or a strategy declares it draws from (``generators()``), by name."""
    return obj.generators() if hasattr(obj, "generators") else {}
