"""``selfsup eval`` (and the end of ``selfsup pretrain``): the evaluation suite, then ``eval.json``, the report
(``report.md`` and the self-contained ``report.html``) and its plots, the retrieval grid included."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import load_config
from ..data import load_datasets, train_val_split
from ..data.build import dataset_counts
from ..evaluate.suite import evaluate_run
from ..report.html import write_html_report
from ..report.results import EvaluatedTestSet, write_report
from ..report.retrieval import plot_retrieval
from ..rundir import RunDir, write_eval


def evaluate_and_report(run_dir: str | Path, progress: bool = True, datasets=None, device: str = "cpu") -> dict:
    run_dir = Path(run_dir)
    cfg = load_config(RunDir(run_dir).config)
    datasets = datasets or load_datasets(cfg.data)
    ev = evaluate_run(run_dir, progress=progress, datasets=datasets, device=device)
    if ev.classes and "classes" not in ev.results:  # names for the per-class table when the report is re-rendered
        ev.results["classes"] = list(ev.classes)
    ev.results["data_counts"] = dataset_counts(*datasets)  # files left out when the data was read (and decoded)
    write_eval(RunDir(run_dir), ev.results)
    e = cfg.eval
    test = EvaluatedTestSet(ev.test_features, ev.test_labels, ev.classes)
    write_report(run_dir, ev.results, test, e.embedding_plot, e.embedding_points, cfg.seed)
    plot_retrieval(run_dir, test, evaluated_test_images(datasets, cfg), cfg.seed)
    write_html_report(run_dir)
    return ev.results


def evaluated_test_images(datasets, cfg) -> torch.Tensor:
    """The images the suite's test features belong to: the test split, or (without one) the validation split it
    scores on instead."""
    train_ds, test_ds = datasets
    if test_ds is not None:
        return test_ds.images
    _, va = train_val_split(len(train_ds), cfg.data.val_fraction, cfg.seed, train_ds.labels)
    return train_ds.images[va]
