"""Fixtures shared by the test modules (pytest finds them here; no test module imports another)."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory):
    """Two-class synthetic images: bright blob left vs right, with noise."""
    root = tmp_path_factory.mktemp("npzdata")
    rng = np.random.default_rng(0)
    for split, n in (("train", 256), ("test", 64)):
        y = rng.integers(0, 2, n)
        x = rng.normal(40, 20, (n, 16, 16))
        for i in range(n):
            c = 4 if y[i] == 0 else 11
            x[i, 5:11, c - 2:c + 3] += 150
        np.savez(root / f"{split}.npz", images=np.clip(x, 0, 255).astype(np.uint8), labels=y)
    return root


@pytest.fixture(scope="module")
def stripes_data(tmp_path_factory):
    """Horizontal vs vertical stripes (random period 3-6 px, phase, brightness 40-200, contrast 20-50, pixel noise
    sigma 20): a random-init CNN separates them only partly (kNN ~0.92 with data BatchNorm statistics); crops, flips
    and colour jitter keep the orientation, so learning their invariances is what helps."""
    root = tmp_path_factory.mktemp("stripes")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:16]
    for split, n in (("train", 512), ("test", 400)):
        y = rng.integers(0, 2, n)
        x = np.empty((n, 16, 16))
        for i in range(n):
            period = rng.uniform(3, 6)
            phase = rng.uniform(0, 2 * np.pi, 2)
            pattern = np.sin(2 * np.pi * (yy if y[i] == 0 else xx) / period + phase[y[i]])
            level, contrast = rng.uniform(40, 200), rng.uniform(20, 50)
            x[i] = level + contrast * pattern + rng.normal(0, 20, (16, 16))
        np.savez(root / f"{split}.npz", images=np.clip(x, 0, 255).astype(np.uint8), labels=y)
    return root
