"""Fashion-MNIST for ``selfsup demo``: found in ``SELFSUP_FMNIST_DIR`` (default the folder the Debian package
``dataset-fashion-mnist`` installs), else installed with apt-get when this process may (root, apt-get present)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from ..data.sources import FMNIST_DEFAULT_DIR
from ..errors import DataError

APT_INSTALL = "apt-get install -y dataset-fashion-mnist"


def fashion_mnist_dir() -> str:
    """Where Fashion-MNIST's idx files are looked for: ``SELFSUP_FMNIST_DIR``, else the Debian package's folder."""
    return os.environ.get("SELFSUP_FMNIST_DIR", FMNIST_DEFAULT_DIR)


def ensure_fashion_mnist(log: Callable[[str], None] = print) -> Path:
    """The Fashion-MNIST folder, installing the data set (``apt-get update && apt-get install -y
    dataset-fashion-mnist``, announced through ``log``) when it holds no training images; a :class:`DataError`
    saying how to install it when that is not possible here or fails."""
    root = fashion_mnist_dir()
    if Path(root).is_dir() and any(Path(root).glob("train-images-idx3-ubyte*")):
        return Path(root)
    if shutil.which("apt-get") and os.geteuid() == 0:
        log(f"Fashion-MNIST not found in {root}; installing it: apt-get update && {APT_INSTALL}")
        ok = subprocess.call(["apt-get", "update", "-qq"]) == 0 and subprocess.call(APT_INSTALL.split()) == 0
        if ok and Path(root).is_dir():
            return Path(root)
    raise DataError(f"Fashion-MNIST not found in {root}. Install it with 'sudo apt-get update && sudo {APT_INSTALL}', "
                    f"or set SELFSUP_FMNIST_DIR to a folder holding the idx files")
