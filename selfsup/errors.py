"""Errors that the command line turns into one clear line and a non-zero exit."""
import signal
from pathlib import Path


class SelfsupError(Exception):
    """Base class: a problem with the user's input or run, explained in the message."""


class DataError(SelfsupError):
    pass


class ConfigError(SelfsupError):
    pass


class TrainingError(SelfsupError):
    pass


class CheckpointError(SelfsupError):
    pass


class Interrupted(TrainingError):
    """Training stopped on a signal: ``step`` steps done, ``checkpoint`` the one to resume from (None: none was
    written), ``exit_code`` 128 + the signal's number."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + int(signum)
        saved = f"checkpoint {checkpoint} saved" if checkpoint is not None else "no checkpoint was written yet"
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}; {saved}")
