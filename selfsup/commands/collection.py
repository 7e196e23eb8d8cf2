"""``selfsup neighbours`` (nearest images, near-duplicates) and ``selfsup select`` (which images to label first)."""
from __future__ import annotations


def neighbours():
    """Nearest images in a collection and near-duplicate pairs."""
    raise NotImplementedError


def select():
    """Which K images to label first."""
    raise NotImplementedError
