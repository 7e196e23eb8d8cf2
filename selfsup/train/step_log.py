"""What the training loop reports after each step: the progress bar, a ``metrics.jsonl`` row every
``log.every_steps`` steps (:func:`~.collection_defaults.log_every`: 10 unless set or fitted to a folder) and at the
last, and the callbacks — each gets a :class:`StepEvent`; a dict it returns is logged as a row of its own (e.g.
kNN accuracy on a validation split). It also keeps the run's throughput: images seen and seconds inside steps."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..progress import StepProgress
from .run_policy import MetricsLog
from .setup import Schedule
from .step import StepOutput


@dataclass
class StepEvent:
    """What a callback sees after an optimiser step."""
    step: int
    total_steps: int
    steps_per_epoch: int
    loss: float
    method: nn.Module


Callback = Callable[[StepEvent], "dict | None"]


@dataclass(frozen=True)
class RowPolicy:
    """Which steps get a metrics row (every ``every`` steps and the last) and whether rows count the unreadable
    files a lazy set replaced so far (``count_bad_images``)."""
    every: int = 10
    count_bad_images: bool = False


class StepLog:
    """Reports the steps of one run of ``method`` to ``metrics`` (rows as ``rows`` says), ``progress`` and
    ``callbacks``. ``step_seconds``: seconds inside training
    steps (data, augmentation, forward, backward, optimiser; no callbacks, no checkpoints); ``seen``: source images
    stepped over, ``batch_size`` a step."""

    def __init__(self, metrics: MetricsLog, progress: StepProgress, schedule: Schedule, callbacks: list[Callback],
                 method: nn.Module, batch_size: int, rows: RowPolicy):
        self.metrics, self.progress, self.schedule, self.callbacks = metrics, progress, schedule, callbacks
        self.method, self.batch_size, self.rows = method, batch_size, rows
        self.started = time.perf_counter()
        self.seen = 0
        self.step_seconds = 0.0
        self.bad_images = 0  # unreadable files a lazy set replaced (data.skip_bad_images)

    def after_step(self, step: int, out: StepOutput, bad_images: int, step_started: float) -> None:
        """Step ``step`` (counted from 1) is done; it began at ``step_started`` and met ``bad_images`` bad files."""
        self.bad_images += bad_images
        self.seen += self.batch_size
        self.step_seconds += time.perf_counter() - step_started
        loss = float(out.loss.detach())
        self.progress.update(step, loss)
        if step % self.rows.every == 0 or step == self.schedule.total_steps:
            self.metrics.append(self._row(step, out, loss))
        self._call_back(StepEvent(step, self.schedule.total_steps, self.schedule.steps_per_epoch, loss, self.method))

    def _row(self, step: int, out: StepOutput, loss: float) -> dict:
        row = {"step": step, "epoch": round(self.schedule.epoch(step), 4), "loss": loss, "lr": out.lr,
               "img_per_s": self.seen / self.step_seconds, "time_s": self.seconds()}
        if out.penalty is not None:
            row["penalty"] = float(out.penalty.detach())
        if self.rows.count_bad_images:
            row["bad_images"] = self.bad_images
        return row

    def _call_back(self, event: StepEvent) -> None:
        for cb in self.callbacks:
            vals = cb(event)
            if vals:
                self.metrics.append({"step": event.step, "epoch": round(self.schedule.epoch(event.step), 4), **vals})
                self.progress.note(" ".join(f"{k} {v:.4f}" for k, v in vals.items()))
                self.method.train()

    def seconds(self) -> float:
        """Wall time since the log was started (the run's training time)."""
        return time.perf_counter() - self.started

    def images_per_second(self) -> float:
        return self.seen / max(self.step_seconds, 1e-9)
