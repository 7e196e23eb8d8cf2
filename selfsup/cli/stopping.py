"""How a command that was stopped by Ctrl-C or SIGTERM ends: one line saying what was saved and how to continue,
and exit code 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a shell reports a killed process."""
from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path

import typer

from ..deferred import load
from ..errors import Interrupted


def resume_command(checkpoints: Path | None) -> str:
    """What continues the run whose checkpoints are in ``checkpoints``: this very command with ``--resume`` when a
    checkpoint exists (under torchrun, whose command lost its ``--devices``: the advice to add ``--resume``), else
    the same command without it (nothing was saved to resume from)."""
    args = [a for a in sys.argv[1:] if a != "--resume"]
    if checkpoints is None or load("selfsup.train.checkpoint").latest_checkpoint(checkpoints) is None:
        return "nothing to resume: run the same command without --resume to start again"
    if load("selfsup.distributed").launched_by_torchrun():
        return "to continue, run the same command with --resume"
    return "to continue: " + shlex.join(["selfsup", *args, "--resume"])


def stopped(e: BaseException, advice: str) -> None:
    """End the command stopped by ``e`` (:class:`Interrupted`, or a KeyboardInterrupt outside the training loop)
    with one line on stderr (``advice``: how to continue) and exit code 128 + the signal's number."""
    if isinstance(e, Interrupted):
        code, what = e.exit_code, str(e)
    else:
        code, what = 128 + signal.SIGINT, "interrupted"
    if load("selfsup.distributed").is_main():
        typer.secho(f"{what}; {advice}", fg="yellow", err=True)
    raise typer.Exit(code)
