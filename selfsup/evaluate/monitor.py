"""kNN accuracy on the validation split during training, as a callback of the training loop (main process only).

It scores the features of the saved backbone (``model.readout_pool`` when set). The bank is a fixed subset of the
rest of train, the queries a fixed subset of the validation split; it runs every ``train.monitor_every_epochs``
epochs and at the last step."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import distributed as D
from ..data import ImageDataset
from ..models import readout_backbone
from .features import extract_features
from .probes import knn_accuracy

if TYPE_CHECKING:
    from ..config import Config
    from ..train.loop import StepEvent


class KnnMonitor:
    def __init__(self, ds: ImageDataset, val_idx, cfg: "Config", device):
        rng = np.random.default_rng(cfg.seed)
        rest = np.setdiff1d(np.arange(len(ds)), val_idx)
        bank = np.sort(rng.choice(rest, min(cfg.train.monitor_samples, len(rest)), replace=False))
        # ds.subset: a lazy set stays lazy (decoded batch by batch when the monitor runs), an in-RAM one is copied
        self.bank_x, self.bank_y = ds.subset(bank).images, ds.labels[bank]
        q = np.sort(rng.choice(val_idx, min(len(val_idx), max(1000, cfg.train.monitor_samples // 5)), replace=False))
        self.q_x, self.q_y = ds.subset(q).images, ds.labels[q]
        self.cfg, self.device = cfg, device

    def __call__(self, event: "StepEvent") -> dict | None:
        every = max(1, int(round(self.cfg.train.monitor_every_epochs * event.steps_per_epoch)))
        if not D.is_main() or (event.step % every and event.step != event.total_steps):
            return None
        e, cl = self.cfg.eval, self.cfg.train.channels_last
        # the features the saved backbone will give (model.readout_pool), from the weights being trained
        backbone = readout_backbone(event.method.backbone, self.cfg.model, self.bank_x.shape[1], self.bank_x.shape[-1])
        fb = extract_features(backbone, self.bank_x, e.batch_size, self.device, cl)
        fq = extract_features(backbone, self.q_x, e.batch_size, self.device, cl)
        return {"knn_val": knn_accuracy(fb, self.bank_y, fq, self.q_y, e.knn_k, e.knn_temperature)}
