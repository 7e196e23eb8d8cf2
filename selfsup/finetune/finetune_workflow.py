"""``selfsup finetune``: train a classifier on (noisy) labels with the one loop, then write ``finetune.json``,
the curves, (for a test set) the risk-coverage table, and ``report.html``."""
from __future__ import annotations

import time

import numpy as np
import torch

from ..config import load_config
from ..data import ImageDataset, labelled_subset, load_datasets, train_val_split
from .selective import aurc, risk_coverage, selective_table
from ..models import backbone_from_config, load_backbone
from .finetune_report import plot_curves, plot_risk_coverage
from ..report.html import write_html_report
from ..robustness.adversarial_training import supervised_adversary
from ..models.classifier import Classifier
from ..rundir import RunDir, read_metrics, write_finetune_record
from .classifier_training import EpochMonitor, noisy_labels
from ..train.loop import Callback, FitPlan, fit
from .objectives import build_objective
from ..train.run_policy import make_run_dir, write_config
from ..train.setup import plan_steps, setup_device


def finetune(config, overrides: list[str] | None = None, resume: bool = False, progress: bool = True,
             callbacks: list[Callback] | None = None) -> dict:
    """Train the classifier; returns (and writes to ``finetune.json``) its results."""
    cfg = load_config(config, overrides)
    f = cfg.finetune
    device = setup_device(cfg)
    run_dir = make_run_dir(cfg, resume)
    train, test = load_datasets(cfg.data)
    labels_known = [t.labels for t in (train, test) if t is not None and t.labels is not None]
    num_classes = int(max(int(lab.max()) for lab in labels_known)) + 1 if labels_known else 0
    noisy = noisy_labels(cfg, train, num_classes)
    num_classes = max(num_classes, int(noisy.max()) + 1)
    tr_idx, val_idx = train_val_split(len(train), cfg.data.val_fraction, cfg.seed, noisy)
    if f.label_fraction is not None:  # few labels: the class-balanced subset, minus the validation images
        tr_idx = np.intersect1d(np.asarray(tr_idx), labelled_subset(train.labels, f.label_fraction, cfg.seed))
    fit_ds = ImageDataset(train.images[tr_idx], noisy[tr_idx], train.classes, "train (labels used)")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, cfg, continuing=resume)
    torch.manual_seed(cfg.seed)
    if f.init:
        backbone = load_backbone(f.init, device)
        backbone.train()
    else:
        backbone = backbone_from_config(cfg.model, train.channels, train.images.shape[-1])
    objective = build_objective(f.loss, fit_ds.labels, num_classes, f)
    steps_per_epoch, total_steps = plan_steps(len(fit_ds), cfg.train)
    adversary = supervised_adversary(cfg, device)
    model = Classifier(backbone, num_classes, objective, total_steps / steps_per_epoch, f.freeze_backbone,
                       adversary).to(device)
    t0 = time.perf_counter()
    r = fit(model, fit_ds, cfg, device, FitPlan(
        RunDir(run_dir).checkpoints, RunDir(run_dir).metrics, total_steps=total_steps, resume=resume,
        callbacks=[EpochMonitor(train, noisy, val_idx, test, cfg), *(callbacks or [])], progress=progress,
        label=f"finetune ({f.loss})"))
    rows = read_metrics(RunDir(run_dir))
    epochs = [row for row in rows if "train_acc_noisy" in row]
    res: dict = {"loss": f.loss, "noise": f.noise, "noise_rate": f.noise_rate, "init": f.init,
                 "actual_label_error": (float((noisy != train.labels).float().mean()) if train.labels is not None
                                        else None),
                 "train_labels": int(len(tr_idx)), "train_seconds": round(time.perf_counter() - t0, 1),
                 "images_per_second": r.images_per_second,
                 "epochs": epochs}
    if epochs and "test_acc" in epochs[-1]:
        res["test_acc_last"] = epochs[-1]["test_acc"]
        best = max(epochs, key=lambda e: e.get("val_acc_noisy", 0))
        res["test_acc_at_best_val"] = best["test_acc"]
        res["best_val_epoch"] = best["epoch"]
        res["test_acc_max"] = max(e["test_acc"] for e in epochs)
    if f.loss == "sat_selective" or test is not None:
        res["selective"] = _selective(model, train, val_idx, test, f.coverages, num_classes)
    write_finetune_record(RunDir(run_dir), res)
    plot_curves(run_dir, epochs, f"{f.loss}, {f.noise} noise {f.noise_rate:.0%}" if f.noise != "none" else f.loss)
    if res.get("selective"):
        plot_risk_coverage(run_dir, res["selective"]["curves"])
    write_html_report(run_dir)
    return res


def _selective(model: Classifier, train, val_idx, test, coverages, k) -> dict | None:
    """Risk-coverage on the test set: rank by the abstain probability (sat_selective) and by softmax response."""
    if test is None or test.labels is None or not len(val_idx):
        return None
    lv, lt = model.predict(train.images[torch.as_tensor(val_idx)]), model.predict(test.images)
    correct = lt[:, :k].argmax(1) == test.labels
    scores = {"softmax_response": (lv[:, :k].softmax(1).max(1).values, lt[:, :k].softmax(1).max(1).values)}
    if lt.shape[1] > k:  # abstain output: accept the lowest abstain probability
        scores["abstain"] = (-lv.softmax(1)[:, k], -lt.softmax(1)[:, k])
    out: dict = {"curves": {}}
    for name, (sv, st) in scores.items():
        cov, risk = risk_coverage(st, correct)
        out[name] = {"aurc": aurc(st, correct), "table": selective_table(sv, st, correct, coverages)}
        out["curves"][name] = {"coverage": cov[::max(1, len(cov) // 200)].tolist(),
                               "risk": risk[::max(1, len(cov) // 200)].tolist()}
    return out
