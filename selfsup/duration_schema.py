"""Wall-clock durations in a config (``train.time_budget``, ``stream.time_budget``): a number and a unit, ``90s``,
``10m``, ``1.5h``, or units combined in that order, ``1h30m``. Anything else — a bare number, another unit, zero —
is one config error naming the key.

A pure schema (pydantic and nothing of selfsup), read by :mod:`selfsup.config` and the capability schemas."""
from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_PATTERN = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
_UNITS = (3600.0, 60.0, 1.0)


def duration_seconds(text: str) -> float:
    """Seconds of a duration such as ``90s``, ``10m``, ``1h30m``; ValueError (one line) for anything else."""
    m = _PATTERN.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m or not any(m.groups()):
        raise ValueError(f"{text!r} is not a duration: write a number and a unit, e.g. 90s, 10m, 1.5h or 1h30m")
    seconds = sum(float(v) * unit for v, unit in zip(m.groups(), _UNITS) if v is not None)
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def _check(value: Any) -> Any:
    if value is None:
        return None
    duration_seconds(value)
    return value.strip()


# a config value that holds a duration as written (kept for the record); duration_seconds() reads it
Duration = Annotated[str, BeforeValidator(_check)]
