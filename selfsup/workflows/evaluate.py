"""``selfsup eval`` (and the end of ``selfsup pretrain``): the evaluation suite, then ``eval.json`` and the report."""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_write_text
from ..config import load_config
from ..evaluate.suite import evaluate_run
from ..report.report import write_report


def evaluate_and_report(run_dir: str | Path, progress: bool = True, datasets=None, device: str = "cpu") -> dict:
    run_dir = Path(run_dir)
    ev = evaluate_run(run_dir, progress=progress, datasets=datasets, device=device)
    atomic_write_text(run_dir / "eval.json", json.dumps(ev.results, indent=1))
    e = load_config(run_dir / "config.yaml")
    write_report(run_dir, ev.results, ev.test_features, ev.test_labels, ev.classes, e.eval.embedding_plot,
                 e.eval.embedding_points, e.seed)
    return ev.results
