"""Label noise for studies, and reading a user's (noisy) label file.

Symmetric noise follows the convention of the self-adaptive-training code: a fraction ``rate`` of the labels is
redrawn uniformly over all K classes (a redrawn label may equal the true one, so the actual error rate is
rate·(1 − 1/K)). Asymmetric noise flips a fraction ``rate`` of each class that has a confusable partner to that
partner (Fashion-MNIST: T-shirt↔shirt, pullover↔coat, sandal↔sneaker); other classes are untouched.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

FMNIST_ASYMMETRIC_PAIRS = [(0, 6), (2, 4), (5, 7)]


def symmetric_noise(labels: torch.Tensor, rate: float, num_classes: int, seed: int = 0) -> torch.Tensor:
    if not 0 <= rate <= 1:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    g = torch.Generator().manual_seed(seed)
    redraw = torch.rand(len(labels), generator=g) < rate
    random = torch.randint(0, num_classes, (len(labels),), generator=g)
    return torch.where(redraw, random, labels)


def asymmetric_noise(labels: torch.Tensor, rate: float, pairs=FMNIST_ASYMMETRIC_PAIRS, seed: int = 0) -> torch.Tensor:
    if not 0 <= rate <= 1:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(labels), generator=g) < rate
    partner = labels.clone()
    for a, b in pairs:
        partner[labels == a] = b
        partner[labels == b] = a
    return torch.where(flip, partner, labels)


def read_labels(path: str | Path, n: int, num_classes: int | None = None) -> torch.Tensor:
    """Labels for the ``n`` training images, in order: ``.npz`` (``labels`` or ``y``), ``.npy``, or ``.csv``/``.txt``
    (one integer per line, or ``index,label`` rows; a header line is skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file {path} not found")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                key = next((k for k in ("labels", "y") if k in f.files), None)
                if key is None:
                    raise DataError(f"{path}: no 'labels' or 'y' array (found {sorted(f.files)})")
                y = np.asarray(f[key])
        elif path.suffix == ".npy":
            y = np.load(path, allow_pickle=False)
        else:
            rows = [r.strip() for r in path.read_text().splitlines() if r.strip()]
            if rows and not rows[0].replace(",", "").replace("-", "").strip().isdigit():
                rows = rows[1:]  # header
            parsed = [[int(c) for c in r.split(",")] for r in rows]
            if parsed and len(parsed[0]) == 2:
                y = np.full(n, -1, dtype=np.int64)
                for i, lab in parsed:
                    if not 0 <= i < n:
                        raise DataError(f"{path}: index {i} outside the {n} training images")
                    y[i] = lab
            else:
                y = np.array([p[0] for p in parsed], dtype=np.int64)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read labels from {path}: {e}") from None
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: {len(y)} labels for {n} training images")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers, got {y.dtype}")
    if (y < 0).any() or (num_classes is not None and (y >= num_classes).any()):
        raise DataError(f"{path}: labels must be in 0..{(num_classes or 0) - 1} and given for every image")
    return torch.from_numpy(y.astype(np.int64))
