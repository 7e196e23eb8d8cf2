"""What the one training loop lets a strategy change (the base class is ``sequential``: change nothing).

The loop (:func:`selfsup.train.loop.fit`) calls, every step, ``batch`` (may replace part of the batch with stored
images), ``watching`` + ``penalty`` (may add a term to the method's loss) and optimises ``module`` (extra trainable
parameters) with the method. The stream driver calls ``begin_chunk``/``end_chunk`` around each chunk and saves
``state()`` with the run. Streams' strategies (:mod:`selfsup.streams.strategies`) and self-supervised adversarial
training (:mod:`selfsup.robustness.adversarial_training`) subclass it.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from ..data import ImageDataset


class Strategy:
    """``sequential``: train on each chunk alone."""
    name = "sequential"
    retrain_from_scratch = False
    module: nn.Module | None = None

    def begin_chunk(self, method: nn.Module, index: int, seed: int) -> None:
        """Before training chunk ``index`` (0-based)."""

    def batch(self, images: torch.Tensor, idx: torch.Tensor, generator: torch.Generator):
        """The uint8 batch to train on and each image's index in the chunk (-1: not from the chunk), given the
        chunk's batch and indices."""
        return images, idx

    def watching(self, method: nn.Module):
        """A context around the method's forward (to capture features)."""
        return contextlib.nullcontext()

    def penalty(self, method: nn.Module, views: list[torch.Tensor]) -> torch.Tensor | None:
        return None

    def end_chunk(self, method: nn.Module, chunk: ImageDataset, index: int, recipe, device, cfg) -> None:
        """After chunk ``index`` was trained."""

    def save(self, directory: Path) -> None:
        """Persist the strategy's state (called after each chunk; the driver commits it atomically)."""

    def load(self, directory: Path, method: nn.Module) -> None:
        """Restore the state written by :meth:`save` (``method`` already holds the saved weights)."""

    def retained_bytes(self) -> int:
        """Bytes kept between chunks beyond the model itself (data, old weights, importances)."""
        return 0
