"""The evaluation suite of a run: the features of the scored splits, then every evaluation of
:data:`selfsup.evaluate.evaluation_registry.EVALUATIONS` in order (kNN and linear probe with per-class accuracy and
confusion matrix, low-label probes and few-shot episodes, the raw-pixel baselines through the same code, transfer to
sklearn digits, RankMe, alignment/uniformity, collapse alarm). The workflow writes ``eval.json`` and the report from
its results."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..config import load_config
from ..data import load_datasets
from ..models import load_backbone
from ..rundir import RunDir, read_train_summary
from . import evaluation_registry
from .features import suite_features
from .suite_entry import SuiteContext


@dataclass
class Evaluation:
    """The suite's results (``eval.json``) and what the report plots: test features, their labels, class names."""
    results: dict
    test_features: torch.Tensor
    test_labels: torch.Tensor | None
    classes: list[str]


def evaluate_run(run_dir: str | Path, progress: bool = True, datasets=None, device: str = "cpu") -> Evaluation:
    """Evaluate the backbone saved in ``run_dir`` with the protocol of its ``config.yaml``."""
    run_dir = Path(run_dir)
    cfg = load_config(RunDir(run_dir).config)
    backbone = load_backbone(run_dir, device)
    train_ds, test_ds = datasets or load_datasets(cfg.data)
    evaluations = evaluation_registry.EVALUATIONS
    t_start = time.perf_counter()
    results: dict = {"run": str(run_dir), "method": cfg.method["name"], "data": cfg.data.source}
    with _StageProgress(["features"] + [ev.stage for ev in evaluations], progress) as sp:
        fs = suite_features(backbone, (train_ds, test_ds), cfg, device, results)
        sp.advance()
        ctx = SuiteContext(fs, cfg, device, backbone, (train_ds, test_ds), results)
        for ev in evaluations:
            ev.run(ctx)
            sp.advance()
        results["eval_seconds"] = time.perf_counter() - t_start
        results["eval_stage_seconds"] = sp.seconds
        if RunDir(run_dir).train_summary.exists():
            results["train"] = read_train_summary(RunDir(run_dir))
    return Evaluation(results, fs.test.features, fs.test.labels,
                      test_ds.classes if test_ds is not None else train_ds.classes)


class _StageProgress:
    def __init__(self, stages, enabled):
        self.stages, self.enabled, self.i = stages, enabled, 0
        self.seconds: dict[str, float] = {}
        self.t = time.perf_counter()

    def __enter__(self):
        if self.enabled:
            self.p = Progress(TextColumn("[bold]evaluate"), BarColumn(), TextColumn("{task.description}"),
                              TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
            self.p.__enter__()
            self.task = self.p.add_task(self.stages[0], total=len(self.stages))
        return self

    def advance(self):
        now = time.perf_counter()
        self.seconds[self.stages[self.i]] = round(now - self.t, 2)
        self.t = now
        self.i += 1
        if self.enabled:
            desc = self.stages[self.i] if self.i < len(self.stages) else "done"
            self.p.update(self.task, advance=1, description=desc)

    def __exit__(self, *a):
        if self.enabled:
            self.p.__exit__(*a)
