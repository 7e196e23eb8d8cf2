"""The evaluation suite's registry: :data:`EVALUATIONS`, the suite's evaluations in the order they run, their rows
appear in the results table and their sentences under it. Each one (a :class:`SuiteEvaluation`: progress stage,
``run``, results-table rows, ``selfsup compare`` columns, report.md notes) is defined in the module of that
evaluation; **a new evaluation** is its module plus one line here. ``evaluate_run`` runs them after the features
(the context every evaluation reads, not an entry); the results table, report.md and ``selfsup compare`` are made
by iterating them."""
from __future__ import annotations

from .baselines import BASELINES
from .diagnostics import DIAGNOSTICS
from .fewshot import LOW_LABEL_FEWSHOT
from .probes import PROBES
from .suite_entry import Column, SuiteEvaluation
from .transfer import TRANSFER

EVALUATIONS: tuple[SuiteEvaluation, ...] = (
    PROBES,  # kNN + linear probe (+ the majority-class row)
    LOW_LABEL_FEWSHOT,  # low-label probes + few-shot episodes
    BASELINES,  # raw-pixel baselines (their cells beside the encoder's)
    TRANSFER,  # transfer to sklearn digits
    DIAGNOSTICS,  # RankMe, alignment / uniformity, collapse alarm
)


def evaluation_rows(results: dict) -> list[tuple[str, str, str]]:
    """The results table of an eval.json dict: every evaluation's rows, in registry order (a KeyError where it
    lacks what an evaluation's rows need)."""
    return [row for ev in EVALUATIONS for row in ev.rows(results)]


def evaluation_notes(results: dict) -> list[str]:
    """The sentences report.md prints under the results table, in registry order."""
    return [note for ev in EVALUATIONS for note in ev.notes(results)]


def evaluation_columns() -> tuple[Column, ...]:
    """The evaluations' columns of ``selfsup compare``, in registry order."""
    return tuple(c for ev in EVALUATIONS for c in ev.columns)
