"""The peer environment: a virtual environment of its own (benchmarks/peers/.venv-lightly, outside the project's
venv) holding lightly 1.6.0 and the pins of requirements-lightly.txt, with the project's torch 2.13.0.

    python benchmarks/peers/env.py            # make it (once; about a minute with a package index), print its python

The torch wheel is the local one the project installs from (/opt/wheels, or $SELFSUP_TORCH_WHEEL) when there is
one, else torch==2.13.0 from the CPU index of download.pytorch.org.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV = HERE / ".venv-lightly"
REQUIREMENTS = HERE / "requirements-lightly.txt"
TORCH = "torch==2.13.0"
TORCHVISION = "torchvision==0.28.0"


def python() -> Path:
    return ENV / "bin" / "python"


def _pip(*args: str) -> None:
    subprocess.run([str(python()), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True)


def ensure() -> Path:
    """The peer environment's python, made first if missing (a half-made one is made again)."""
    marker = ENV / ".complete"
    if marker.exists():
        return python()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(ENV)], check=True)
    local = os.environ.get("SELFSUP_TORCH_WHEEL") or next(iter(sorted(glob.glob("/opt/wheels/torch-2.13.0*.whl"))), "")
    if local:
        _pip(local)
    else:
        _pip(TORCH, "--index-url", "https://download.pytorch.org/whl/cpu")
    _pip("--no-deps", TORCHVISION)
    _pip("-r", str(REQUIREMENTS), TORCH)
    check = subprocess.run([str(python()), str(HERE / "lightly_simclr.py"), "--help"], capture_output=True, text=True)
    if check.returncode != 0:
        sys.exit(f"the peer environment does not import lightly's pipeline:\n{check.stderr[-1500:]}")
    marker.write_text("ok\n")
    return python()


if __name__ == "__main__":
    print(ensure())
