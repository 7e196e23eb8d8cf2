"""``selfsup attack`` and ``selfsup corrupt`` end to end: the classifier on a run's encoder, a seeded subset of its
test images, the report (``robustness_<classifier>.json`` / ``corruptions_<classifier>.json`` in the run
directory) and the run's ``report.html`` rewritten with its robustness section."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..report.html import write_html_report
from .attacks import AttackSuite, build_classifier, corruption_report, robustness_report
from .corruptions import corrupt
from ..rundir import RunDir, write_report_record


def _test_subset(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of ``n`` test images (all when there are fewer), a seeded random draw, on the images' device."""
    return torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: min(n, len(x))].to(x.device)


def attack_run(run_dir: str | Path, classifier: str, suite: AttackSuite, n: int,
               device: str | torch.device = "cpu") -> dict:
    """Clean and robust accuracy of the ``classifier`` (linear | knn | finetuned) on the run under every attack of
    ``suite``, on ``n`` seeded test images attacked on ``device``; written to ``robustness_<classifier>.json``."""
    model, x, y = build_classifier(run_dir, classifier, device, seed=suite.seed)
    idx = _test_subset(x, n, suite.seed)
    rep = robustness_report(model, x[idx], y[idx], suite)
    rep.update(classifier=classifier, attacks=list(suite.attacks))
    write_report_record(RunDir(run_dir).robustness(classifier), rep)
    write_html_report(run_dir)  # the robustness section and any gradient-masking warning at the top
    return rep


def corrupt_run(run_dir: str | Path, classifier: str, corruptions: list[str], n: int, seed: int = 0,
                device: str | torch.device = "cpu", save: Path | None = None) -> dict:
    """Accuracy of the ``classifier`` on ``n`` seeded test images under each of ``corruptions`` at 5 severities;
    written to ``corruptions_<classifier>.json``, and the corrupted images to ``save/<corruption>.npz`` (images:
    severity × N × C × H × W uint8, labels) when ``save`` is given."""
    model, x, y = build_classifier(run_dir, classifier, device, seed=seed)
    idx = _test_subset(x, n, seed)
    imgs = (x[idx].cpu() * 255).round().to(torch.uint8)
    rep = corruption_report(model, imgs, y[idx], corruptions, seed=seed)
    rep.update(classifier=classifier, n=len(idx))
    write_report_record(RunDir(run_dir).corruptions(classifier), rep)
    write_html_report(run_dir)
    if save:
        save.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(corruptions):
            arr = np.stack([corrupt(imgs, name, s, seed + 1000 * i + s).numpy() for s in range(1, 6)])
            np.savez_compressed(save / f"{name}.npz", images=arr, labels=y[idx].cpu().numpy())
    return rep
