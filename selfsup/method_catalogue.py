"""The method catalogue, read without torch: each registered method's name, view recipe, description and parameter
defaults, in registry order, as ``selfsup methods`` prints them.

The method classes hold these facts, but importing them imports torch (~2 s on 2 cores), so they are written once
to ``method_catalogue.json`` next to this module (shipped as package data) by :mod:`selfsup.methods.catalogue`:

    python -m selfsup.methods.catalogue

tests/test_method_catalogue.py fails while the file differs from what the registry gives (a method added, a default
or a description changed without regenerating it)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import SelfsupError

CATALOGUE = Path(__file__).with_name("method_catalogue.json")
"""The generated file (package data, next to this module)."""

REGENERATE = "python -m selfsup.methods.catalogue"
"""The command that rewrites :data:`CATALOGUE` from ``selfsup.methods.METHODS``."""


@dataclass(frozen=True)
class MethodEntry:
    """One method as the catalogue records it; ``params`` are its ``Params()`` defaults in JSON form (tuples as
    lists, as a YAML config writes them)."""
    name: str
    recipe: str
    description: str
    params: dict[str, object]


def read_catalogue(path: Path = CATALOGUE) -> list[MethodEntry]:
    """The catalogue's methods, in registry order; SelfsupError naming the file and :data:`REGENERATE` when it is
    missing or unreadable."""
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
        return [MethodEntry(r["name"], r["recipe"], r["description"], dict(r["params"])) for r in records]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SelfsupError(f"cannot read the method catalogue {path} ({e}); regenerate it with {REGENERATE}") \
            from None
