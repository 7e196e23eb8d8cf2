"""A rich progress bar with ETA for training steps (a no-op when disabled)."""
from __future__ import annotations

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class StepProgress:
    def __init__(self, total: int, start: int, enabled: bool, label: str = "pretrain"):
        self.enabled = enabled
        self.extra = ""
        if enabled:
            self.p = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                              TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                              TextColumn("{task.fields[info]}"))
            self.task = self.p.add_task("train", total=total, completed=start, info="")

    def __enter__(self):
        if self.enabled:
            self.p.__enter__()
        return self

    def __exit__(self, *a):
        if self.enabled:
            self.p.__exit__(*a)

    def update(self, step: int, loss: float) -> None:
        if self.enabled:
            self.p.update(self.task, completed=step, info=f"loss {loss:.4f} {self.extra}")

    def note(self, text: str) -> None:
        self.extra = text
