"""Ctrl-C and SIGTERM during training: the first signal asks the loop to stop after the step in progress, which is
then checkpointed (atomically, as every checkpoint) before :class:`Interrupted` is raised; the process ends with
128 + the signal's number (130 for SIGINT, 143 for SIGTERM) and a resume command that works. A second signal stops
at once (KeyboardInterrupt), without a new checkpoint.

Handlers are installed only in the main thread (elsewhere nothing changes and no stop is ever requested), and the
previous handlers are restored when training ends, however it ends, so a library user or a test is not left with
changed handlers. Under torchrun every rank gets the terminal's Ctrl-C, and the agent then sends its workers
SIGTERM: the ranks agree on a stop each step (:meth:`StopSignals.agreed`, an all-reduce of the flag), and under DDP
a second signal of another kind than the first (the agent's SIGTERM after Ctrl-C) is not taken as a second request.
"""
from __future__ import annotations

import signal
import sys
import threading

import torch

from .. import distributed as D
from ..errors import Interrupted  # noqa: F401  (raised here; defined with the other errors)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """A context manager: while it is open, SIGINT / SIGTERM set :attr:`signum` (the first one) instead of killing
    the process; a second one raises KeyboardInterrupt."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict[int, object] = {}
        self.distributed = D.world_size() > 1

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            sys.stderr.write(f"\n{signal.Signals(signum).name}: finishing the step in progress and saving a "
                             f"checkpoint (send it again to stop at once)\n")
            return
        if self.distributed and signum != self.signum:  # torchrun's agent forwarding the user's Ctrl-C
            return
        raise KeyboardInterrupt

    def agreed(self, device: torch.device) -> int | None:
        """The signal that stops the run, None to go on; under DDP the same answer on every rank (an all-reduce:
        the highest signal number any rank got)."""
        if not self.distributed:
            return self.signum
        flag = torch.tensor([self.signum or 0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None
