"""What one evaluation of the suite is made of (:class:`SuiteEvaluation`) and what it computes from
(:class:`SuiteContext`); the suite's evaluations, in order, are listed in
:data:`selfsup.evaluate.evaluation_registry.EVALUATIONS`, each defined in the module of that evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..number_format import text


@dataclass(frozen=True)
class Column:
    """One column of ``selfsup compare``: the row's key (also the CSV header), the header the terminal table shows,
    how a present value is written there (a missing one is "–") and, for an evaluation's column, ``get``: its value
    from a run's eval.json dict (None where the run has no such number)."""
    key: str
    header: str
    format: Callable[[Any], str] = text
    get: Callable[[dict], Any] | None = None


@dataclass(frozen=True)
class SuiteContext:
    """What every evaluation of the suite reads: ``features`` (a :class:`selfsup.evaluate.features.SuiteFeatures`:
    the backbone's features of the scored splits), the run's config ``cfg``, the evaluation ``device``, the
    ``backbone``, ``datasets`` (train, test or None) and ``results``: the dict (eval.json) each evaluation writes its
    part into."""
    features: Any
    cfg: Any
    device: Any
    backbone: Any
    datasets: tuple
    results: dict


def _no_rows(results: dict) -> list[tuple[str, str, str]]:
    return []


def _no_notes(results: dict) -> list[str]:
    return []


@dataclass(frozen=True)
class SuiteEvaluation:
    """One evaluation of the suite. ``stage``: its progress-bar label (and its key in eval.json's
    ``eval_stage_seconds``); ``run(ctx)``: computes and writes its part of ``ctx.results``; ``rows(results)``: its
    rows of the results table, (metric, SSL encoder cell, raw-pixel cell); ``columns``: its columns of
    ``selfsup compare`` (each with ``get``); ``notes(results)``: the sentences report.md prints under the table."""
    name: str
    stage: str
    run: Callable[[SuiteContext], None]
    rows: Callable[[dict], list[tuple[str, str, str]]] = _no_rows
    columns: tuple[Column, ...] = ()
    notes: Callable[[dict], list[str]] = _no_notes
