"""How numbers are written in tables (results table, report.md / report.html, ``selfsup compare``): one function
per kind of cell, "–" for a missing value where a cell may be empty."""
from __future__ import annotations


def pct(v, digits: int = 2) -> str:
    """A share as a percentage ("–" for None)."""
    return "–" if v is None else f"{100 * v:.{digits}f} %"


def mean_ci(r: dict | None) -> str:
    """A few-shot result ``{"mean", "ci95"}`` as "mean ± 95 % CI %" ("–" for none)."""
    return "–" if not r else f"{100 * r['mean']:.2f} ± {100 * r['ci95']:.2f} %"


def text(v) -> str:
    return str(v)


def points(v) -> str:
    """A share in percentage points, no sign: 0.8521 → "85.21"."""
    return f"{100 * v:.2f}"


def whole(v) -> str:
    return f"{v:.0f}"


def one_decimal(v) -> str:
    return f"{v:.1f}"
