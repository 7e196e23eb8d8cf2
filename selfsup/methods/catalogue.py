"""Writes the torch-free method catalogue (:mod:`selfsup.method_catalogue`) from the registry: for each method of
``METHODS``, in order, its name, ``recipe``, ``DESCRIPTIONS`` entry and ``Params()`` defaults.

    python -m selfsup.methods.catalogue           # rewrite selfsup/method_catalogue.json
    python -m selfsup.methods.catalogue --check   # exit 1 when the file differs from what would be written

Run it after adding a method or changing a method's default, recipe or description (tests/test_method_catalogue.py
fails until then)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..atomic import atomic_write_text
from ..method_catalogue import CATALOGUE, REGENERATE
from . import DESCRIPTIONS, METHODS


def records() -> list[dict]:
    """The catalogue's records as the registry gives them now."""
    return [{"name": name, "recipe": cls.recipe, "description": DESCRIPTIONS.get(name, ""),
             "params": cls.Params().model_dump(mode="json")} for name, cls in METHODS.items()]


def render() -> str:
    """The catalogue file's text."""
    return json.dumps(records(), indent=2, ensure_ascii=False) + "\n"


def write_catalogue(path: Path = CATALOGUE) -> Path:
    """Write the catalogue to ``path`` (atomically); returns ``path``."""
    atomic_write_text(path, render())
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m selfsup.methods.catalogue", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the file is stale (write nothing)")
    ap.add_argument("--out", type=Path, default=CATALOGUE, help=f"file to write or check (default {CATALOGUE})")
    args = ap.parse_args(argv)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
        if current != render():
            print(f"{args.out} is stale: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    print(f"wrote {write_catalogue(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
