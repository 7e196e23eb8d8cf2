"""The one way selfsup defers an import: ``load("selfsup.x.y")`` imports a module when it is first needed, not when
the caller is imported. tests/test_layering.py accepts no other (no ``importlib`` or ``__import__`` elsewhere, no
import statement inside a function), and checks that every ``load("...")`` names a module of the caller's layer or a
lower one, as an import statement would.

It is used where starting fast matters: ``selfsup --help`` and ``selfsup methods`` must not import torch, scikit-learn
or matplotlib, so the command modules of :mod:`selfsup.cli` import only typer and rich at the top and ``load`` the
workflow a command runs in its body (``selfsup methods`` reads :mod:`selfsup.method_catalogue`, generated from the
method classes, instead of importing them); ``import selfsup`` loads the Python API on first use of one of its names
(PEP 562 ``__getattr__`` in ``selfsup/__init__.py``, the same idea for attributes).

Two registries live below the modules that fill them: the config checks (:func:`selfsup.config.register_check`,
filled by the data sources, the image reader and the method zoo) and the report sections
(:func:`selfsup.report.sections.register_section`, filled by the capability packages). Their readers call
:func:`load_all` on :data:`CONFIG_CHECKS` / :data:`REPORT_SECTIONS` before reading them, so a check or a section is
there however selfsup was entered (``from selfsup.config import load_config`` in a fresh interpreter, ``selfsup
attack`` on a finetune run). These two lists are the only references to a higher layer; each module in them
registers when imported."""
from __future__ import annotations

import importlib
from types import ModuleType

CONFIG_CHECKS = ("selfsup.data.image_reader", "selfsup.data.registry", "selfsup.methods", "selfsup.streams.strategies")
"""The modules that register config checks, in the order their checks run."""

REPORT_SECTIONS = ("selfsup.report.html", "selfsup.streams.stream_report", "selfsup.finetune.finetune_report",
                   "selfsup.robustness.robustness_report")
"""The modules that register report sections: the core ones (selfsup.report.html), then the capability packages'."""


def load(name: str) -> ModuleType:
    """The module ``name`` (a full dotted name), imported now if it was not yet."""
    return importlib.import_module(name)


def load_all(names: tuple[str, ...]) -> None:
    """Import every module of ``names`` (what registers itself on import)."""
    for name in names:
        importlib.import_module(name)
