"""Fine-tuning a classifier on (possibly noisy) labels with the one training loop: ``selfsup finetune``.

The classifier (backbone + linear head) is a method like any other to the loop — ``loss = model(views, idx=,
labels=)`` — with its objective (:mod:`selfsup.train.objectives`: ce, label smoothing, GCE, SAT, SAT-selective)
inside. Labels come from the data set, a label file, or noise injected for a study; a validation split (with the
same noisy labels — no clean labels are used for any choice) is held out from train. After every epoch the run logs
accuracy on the noisy training labels, on the clean training labels (when noise was injected: memorisation shows
as the two diverging), on the validation split and on the clean test set.

Run directory: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``finetune.json`` (results), ``curves.png``
(train accuracy on the noisy labels vs test accuracy per epoch) and, for ``sat_selective``, ``risk_coverage.png``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import Config, dump_config, load_config
from ..data import ImageDataset, train_val_split
from ..data.noise import asymmetric_noise, read_labels, symmetric_noise
from ..errors import DataError
from .checkpoint import atomic_write_text
from .loop import fit, load_datasets, make_run_dir, setup_device
from .objectives import Objective, build_objective


class Classifier(nn.Module):
    """Backbone + linear head; the training loss is its objective's."""
    recipe = "supervised"
    uses_indices = True
    uses_labels = True

    def __init__(self, backbone: nn.Module, num_classes: int, objective: Objective, epochs: float,
                 freeze_backbone: bool = False, adversarial: str = "none", adv_eps: float = 0.1, adv_steps: int = 10,
                 trades_beta: float = 6.0):
        super().__init__()
        self.adversarial, self.adv_eps, self.adv_steps, self.trades_beta = adversarial, adv_eps, adv_steps, trades_beta
        self.backbone, self.objective, self.num_classes = backbone, objective, num_classes
        self.head = nn.Linear(backbone.feat_dim, num_classes + objective.extra_outputs)
        self.epochs, self.freeze = epochs, freeze_backbone
        self.register_buffer("epoch_now", torch.zeros(()))
        if freeze_backbone:
            for p in backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.backbone.eval()
        return self

    def forward(self, views, idx=None, labels=None):
        if self.adversarial != "none" and self.training:
            from .adversarial import supervised_adversarial_loss

            return supervised_adversarial_loss(self.adversarial, self, views[0], labels, idx, self.adv_eps,
                                               self.adv_steps, self.trades_beta)
        return self.objective(self.head(self.backbone(views[0])), labels, idx, float(self.epoch_now))

    @torch.no_grad()
    def on_step(self, progress: float) -> None:
        self.epoch_now.fill_(progress * self.epochs)

    @torch.no_grad()
    def predict(self, images_uint8: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """Logits (all outputs, abstain included) in eval mode."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        out = [self.head(self.backbone(images_uint8[i:i + batch].to(dev).float() / 255)).float().cpu()
               for i in range(0, len(images_uint8), batch)]
        self.train(was)
        return torch.cat(out)


def noisy_labels(cfg: Config, train: ImageDataset, num_classes: int) -> torch.Tensor:
    f = cfg.finetune
    if f.labels:
        return read_labels(f.labels, len(train), num_classes)
    if train.labels is None:
        raise DataError(f"{cfg.data.source} has no labels: pass finetune.labels=FILE")
    if f.noise == "symmetric":
        return symmetric_noise(train.labels, f.noise_rate, num_classes, f.noise_seed)
    if f.noise == "asymmetric":
        return asymmetric_noise(train.labels, f.noise_rate, seed=f.noise_seed)
    return train.labels.clone()


class _EpochMonitor:
    def __init__(self, train: ImageDataset, noisy: torch.Tensor, val_idx, test: ImageDataset | None, cfg: Config):
        rng = np.random.default_rng(cfg.seed)
        n = min(cfg.finetune.eval_samples, len(train))
        self.tr = torch.as_tensor(np.sort(rng.choice(len(train), n, replace=False)))
        self.train, self.noisy, self.val_idx, self.test = train, noisy, torch.as_tensor(val_idx), test

    def __call__(self, model: Classifier) -> dict:
        k = model.num_classes
        out = {}
        pred = model.predict(self.train.images[self.tr])[:, :k].argmax(1)
        out["train_acc_noisy"] = float((pred == self.noisy[self.tr]).float().mean())
        if self.train.labels is not None:
            out["train_acc_clean"] = float((pred == self.train.labels[self.tr]).float().mean())
        if len(self.val_idx):
            pv = model.predict(self.train.images[self.val_idx])[:, :k].argmax(1)
            out["val_acc_noisy"] = float((pv == self.noisy[self.val_idx]).float().mean())
        if self.test is not None and self.test.labels is not None:
            pt = model.predict(self.test.images)[:, :k].argmax(1)
            out["test_acc"] = float((pt == self.test.labels).float().mean())
        return out


def finetune(config, overrides: list[str] | None = None, resume: bool = False, progress: bool = True,
             interrupt_at: int | None = None) -> dict:
    """Train the classifier; returns (and writes to ``finetune.json``) its results."""
    from ..api import load as load_backbone
    from ..models import build_backbone
    from .loop import backbone_kwargs

    cfg = load_config(config, overrides)
    f = cfg.finetune
    device, _ = setup_device(cfg)
    run_dir = make_run_dir(cfg, resume)
    train, test = load_datasets(cfg)
    labels_known = [t.labels for t in (train, test) if t is not None and t.labels is not None]
    num_classes = int(max(int(lab.max()) for lab in labels_known)) + 1 if labels_known else 0
    noisy = noisy_labels(cfg, train, num_classes)
    num_classes = max(num_classes, int(noisy.max()) + 1)
    tr_idx, val_idx = train_val_split(len(train), cfg.data.val_fraction, cfg.seed, noisy)
    fit_ds = ImageDataset(train.images[tr_idx], noisy[tr_idx], train.classes, "train (labels used)")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    torch.manual_seed(cfg.seed)
    if f.init:
        backbone = load_backbone(f.init, device)
        backbone.train()
    else:
        backbone = build_backbone(cfg.model.backbone, train.channels, **backbone_kwargs(cfg))
    objective = build_objective(f.loss, fit_ds.labels, num_classes, f)
    model = Classifier(backbone, num_classes, objective, cfg.train.epochs, f.freeze_backbone, f.adversarial,
                       f.adv_eps, f.adv_steps, f.trades_beta).to(device)
    monitor = _EpochMonitor(train, noisy, val_idx, test, cfg)
    t0 = time.perf_counter()
    r = fit(model, fit_ds, cfg, device, run_dir / "checkpoints", run_dir / "metrics.jsonl", resume=resume,
            monitor=monitor, progress=progress, interrupt_at=interrupt_at, label=f"finetune ({f.loss})")
    if r.interrupted:
        return {"interrupted_at": r.steps}
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    epochs = [row for row in rows if "train_acc_noisy" in row]
    res: dict = {"loss": f.loss, "noise": f.noise, "noise_rate": f.noise_rate, "init": f.init,
                 "actual_label_error": float((noisy != train.labels).float().mean()) if train.labels is not None else None,
                 "train_seconds": round(time.perf_counter() - t0, 1), "images_per_second": r.images_per_second,
                 "epochs": epochs}
    if epochs and "test_acc" in epochs[-1]:
        res["test_acc_last"] = epochs[-1]["test_acc"]
        best = max(epochs, key=lambda e: e.get("val_acc_noisy", 0))
        res["test_acc_at_best_val"] = best["test_acc"]
        res["best_val_epoch"] = best["epoch"]
        res["test_acc_max"] = max(e["test_acc"] for e in epochs)
    if f.loss == "sat_selective" or test is not None:
        res["selective"] = _selective(model, train, val_idx, noisy, test, f.coverages, num_classes)
    atomic_write_text(run_dir / "finetune.json", json.dumps(res, indent=1))
    from ..report.finetune import plot_curves, plot_risk_coverage

    plot_curves(run_dir, epochs, f"{f.loss}, {f.noise} noise {f.noise_rate:.0%}" if f.noise != "none" else f.loss)
    if "selective" in res and res["selective"]:
        plot_risk_coverage(run_dir, res["selective"]["curves"])
    return res


def _selective(model: Classifier, train, val_idx, noisy, test, coverages, k) -> dict | None:
    """Risk-coverage on the test set: rank by the abstain probability (sat_selective) and by softmax response."""
    from ..evaluate.selective import aurc, risk_coverage, selective_table

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
