"""``selfsup compare RUN RUN ...``: one table and one plot across runs."""
from __future__ import annotations


def compare():
    """One table and one plot across runs."""
    raise NotImplementedError
