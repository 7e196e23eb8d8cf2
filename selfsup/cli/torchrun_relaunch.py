"""``--devices N``: the command re-executed under torchrun, one process per device (DDP)."""
from __future__ import annotations

import subprocess
import sys

import typer


def relaunch_under_torchrun(devices: int) -> None:
    """Re-execute this very command under torchrun with ``devices`` processes (DDP)."""
    args = [a for a in sys.argv[1:]]
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--devices":
            skip = True
            continue
        if a.startswith("--devices="):
            continue
        cleaned.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
           "-m", "selfsup.cli", *cleaned]
    proc = subprocess.Popen(cmd)
    while True:
        try:  # Ctrl-C reaches the workers too: wait for them to save their checkpoint and exit
            raise typer.Exit(proc.wait())
        except KeyboardInterrupt:
            continue
