"""benchmarks/folder_decoding.py: the steady-state window both trees are timed on, and verdicts computed from the
record."""
from __future__ import annotations

import pytest

from benchmarks import folder_decoding as fd


def _rows(step_seconds: list[float], batch: int, every: int) -> list[dict]:
    """metrics.jsonl rows as the training loop writes them: cumulative img/s every ``every`` steps and at the end."""
    rows, done = [], 0.0
    for i, s in enumerate(step_seconds, 1):
        done += s
        if i % every == 0 or i == len(step_seconds):
            rows.append({"step": i, "loss": 1.0, "img_per_s": i * batch / done})
    return rows


@pytest.mark.parametrize("every", [1, 2, 5, 10])  # this tree logs a folder run every total // 50 steps; old: 10
def test_steady_times_the_same_steps_after_the_warmup_row_whatever_the_log_interval(every):
    times = [5.0] * 10 + [0.5] * 15  # slow first steps (workers starting), then steady
    img_s, a, b = fd.steady(_rows(times, 32, every), 32, warmup=5)  # the old code's first row from step 5 on: 10
    assert (a, b) == (10, 25)
    assert img_s == pytest.approx(15 * 32 / (15 * 0.5))


def test_steady_takes_the_next_row_when_the_interval_skips_the_warmup_step():
    img_s, a, b = fd.steady(_rows([5.0] * 10 + [0.5] * 15, 32, 3), 32, warmup=10)
    assert (a, b) == (12, 25)
    assert img_s == pytest.approx(13 * 32 / (13 * 0.5))


def test_steady_falls_back_to_the_whole_run_when_it_is_shorter_than_the_warmup():
    img_s, a, b = fd.steady(_rows([2.0] * 5, 32, 1), 32, warmup=10)
    assert (a, b) == (0, 5)
    assert img_s == pytest.approx(16.0)


def test_the_targets_are_computed_from_the_runs():
    rec = {"train": {"runs": {"new": {"lazy": [{"img_s": 60.0}, {"img_s": 70.0}], "ram": [{"img_s": 100.0}]},
                              "old": {"lazy": [{"img_s": 80.0}], "ram": [{"img_s": 100.0}]}}}}
    ratios = fd.lazy_ratios(rec)
    assert ratios["new"]["best"] == pytest.approx(0.7) and ratios["old"]["best"] == pytest.approx(0.8)
    assert fd._verdict(ratios["new"]["best"], fd.LAZY_TARGET) == "misses the ≥ 0.75 target"
    assert fd._verdict(ratios["old"]["best"], fd.LAZY_TARGET) == "meets the ≥ 0.75 target"
