"""What ``selfsup finetune`` trains the classifier (:class:`selfsup.models.classifier.Classifier`) with: its labels
and its per-epoch monitor.

The classifier (backbone + linear head) is a method like any other to the loop — ``loss = model(views, idx=,
labels=)`` — with its objective (:mod:`selfsup.finetune.objectives`: ce, label smoothing, GCE, SAT, SAT-selective)
inside. Labels come from the data set, a label file, or noise injected for a study; a validation split (with the
same noisy labels — no clean labels are used for any choice) is held out from train. After every epoch the run logs
accuracy on the noisy training labels, on the clean training labels (when noise was injected: memorisation shows
as the two diverging), on the validation split and on the clean test set.

Run directory: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``finetune.json`` (results), ``curves.png``
(train accuracy on the noisy labels vs test accuracy per epoch) and, for ``sat_selective``, ``risk_coverage.png``.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import distributed as D
from ..config import Config
from ..data import ImageDataset
from .label_noise import asymmetric_noise, read_labels, symmetric_noise
from ..errors import DataError
from ..train.loop import StepEvent


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


class EpochMonitor:
    """A loop callback: once per epoch, accuracy on the noisy and the clean training labels, the noisy validation
    split and the clean test set (main process only)."""

    def __init__(self, train: ImageDataset, noisy: torch.Tensor, val_idx, test: ImageDataset | None, cfg: Config):
        rng = np.random.default_rng(cfg.seed)
        n = min(cfg.finetune.eval_samples, len(train))
        self.tr = torch.as_tensor(np.sort(rng.choice(len(train), n, replace=False)))
        self.train, self.noisy, self.val_idx, self.test = train, noisy, torch.as_tensor(val_idx), test
        self.every_epochs = cfg.train.monitor_every_epochs

    def __call__(self, event: StepEvent) -> dict | None:
        every = max(1, int(round(self.every_epochs * event.steps_per_epoch)))
        if not D.is_main() or (event.step % every and event.step != event.total_steps):
            return None
        model = event.method
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
