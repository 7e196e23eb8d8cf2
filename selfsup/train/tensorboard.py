"""``log.tensorboard=true``: a training callback that mirrors ``metrics.jsonl`` into TensorBoard event files under
``<run_dir>/tensorboard/`` (view with ``tensorboard --logdir runs``).

Every numeric field of a metrics row — loss, lr, img/s, the kNN monitor's ``knn_val``, a strategy's penalty — becomes
a scalar at the row's step, so TensorBoard shows exactly the numbers of ``metrics.jsonl`` (the loop writes the rows;
this callback, called after the loop's own row and after the callbacks before it, reads the rows appended since its
last call). The writer is opened at the first step the run trains with ``purge_step`` = that step: a resumed run
hides the events its crashed predecessor logged after the checkpoint it resumes from, and the step axis continues.
Turned on for the first time on a resumed run, it first copies the history already in ``metrics.jsonl``.

Main process only (the caller creates it there); call :meth:`TensorBoardLog.close` (or use it as a context manager)
at the end and on a crash: the writer flushes every 30 s and on close."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from torch.utils.tensorboard import SummaryWriter

if TYPE_CHECKING:
    from .loop import StepEvent

NOT_SCALARS = ("step", "epoch", "time_s", "chunk")  # the axis and bookkeeping, not curves


class TensorBoardLog:
    """Callback: ``metrics.jsonl`` rows (those whose fields match ``match``, e.g. a stream's ``{"chunk": 3}``) as
    TensorBoard scalars at ``step_offset + row step`` (a stream's chunks follow each other on one axis)."""

    def __init__(self, log_dir: Path, metrics_path: Path, match: dict | None = None, step_offset: int = 0):
        self.log_dir, self.metrics_path = Path(log_dir), Path(metrics_path)
        self.match, self.step_offset = dict(match or {}), step_offset
        self.writer: SummaryWriter | None = None
        self.offset = 0  # bytes of metrics.jsonl already read

    def __call__(self, event: "StepEvent") -> None:
        if self.writer is None:
            self._open(event.step)
        self._read_new()
        return None

    def _open(self, first_step: int) -> None:
        had_events = self.log_dir.is_dir() and any(self.log_dir.glob("events.out.tfevents.*"))
        self.writer = SummaryWriter(str(self.log_dir), purge_step=self.step_offset + first_step, flush_secs=30)
        # rows before this session's first step: the previous session's (already in TensorBoard unless it ran
        # without the switch: then copy them now)
        self.min_step = first_step if had_events else 0
        self.offset = 0

    def _read_new(self) -> None:
        if not self.metrics_path.exists():
            return
        size = self.metrics_path.stat().st_size
        if size < self.offset:  # rewritten (truncated): read it again from the start
            self.offset = 0
        if size == self.offset:
            return
        with open(self.metrics_path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(size - self.offset)
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next call
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            if line.strip():
                self._write_row(json.loads(line))

    def _write_row(self, row: dict) -> None:
        if any(row.get(k) != v for k, v in self.match.items()) or row.get("step", 0) < self.min_step:
            return
        step = self.step_offset + int(row["step"])
        for key, value in row.items():
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self._read_new()  # rows the loop wrote after this callback's last call (none in a normal run)
            self.writer.close()
            self.writer = None

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
