"""Rich progress bars with ETA (no-ops when disabled): :class:`StepProgress` for training steps,
:class:`TaskProgress` for a counted amount of other work (attacks, corruptions, a sequence study's chunks)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class _Bar:
    """A rich Progress that is only drawn when ``enabled``; a context manager."""
    enabled: bool

    def __enter__(self):
        if self.enabled:
            self.p.__enter__()
        return self

    def __exit__(self, *a):
        if self.enabled:
            self.p.__exit__(*a)


class StepProgress(_Bar):
    def __init__(self, total: int, start: int, enabled: bool, label: str = "pretrain"):
        self.enabled = enabled
        self.extra = ""
        if enabled:
            self.p = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                              TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                              TextColumn("{task.fields[info]}"))
            self.task = self.p.add_task("train", total=total, completed=start, info="")

    def update(self, step: int, loss: float) -> None:
        if self.enabled:
            self.p.update(self.task, completed=step, info=f"loss {loss:.4f} {self.extra}")

    def note(self, text: str) -> None:
        self.extra = text


class TaskProgress(_Bar):
    """One bar over ``total`` units of work, ``label`` in bold, what is being done now (``description``) after it.

    Bars opened while one is showing (a chunk's :class:`StepProgress` inside a sequence study) are shown below it on
    the same console. ``console``: where to draw (default: rich's console, stdout)."""

    def __init__(self, label: str, total: int, enabled: bool = True, unit: str = "", console: Console | None = None):
        self.enabled = enabled
        if enabled:
            self.p = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                              TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                              TextColumn("{task.description}"), console=console)
            self.task = self.p.add_task("", total=total)

    def describe(self, text: str) -> None:
        if self.enabled:
            self.p.update(self.task, description=text)

    def advance(self, n: int = 1) -> None:
        if self.enabled:
            self.p.update(self.task, advance=n)
