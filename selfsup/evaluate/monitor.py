"""kNN accuracy on the validation split during training, as a callback of the training loop (main process only).

It scores what the evaluation scores, with the evaluation's protocol: the features of the saved backbone
(``readout_backbone``: ``model.readout_pool`` when set), cosine kNN with votes weighted exp(s/T), and k and T chosen
from ``eval.knn_k_grid`` × ``eval.knn_temperature_grid`` (``eval.knn_temperature`` when unset) as the best
validation accuracy (:func:`selfsup.evaluate.probes.select_knn`, the function the suite's ``knn_val`` comes from).
Only the images differ: the bank is a fixed seeded subset of the fitting part of train (``train.monitor_samples``
images), the queries a fixed seeded subset of the validation split (at least 1000 or ``monitor_samples / 5``). With
subsets as large as the splits, its value at the last step is the final evaluation's validation kNN (``knn_val``).
It runs every ``train.monitor_every_epochs`` epochs and at the last step; a row holds ``knn_val`` and the ``knn_k`` and
``knn_temperature`` chosen."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import distributed as D
from ..data import ImageDataset
from ..models import readout_backbone
from .features import extract_features
from .probes import select_knn

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
        k, t, scores = select_knn(fb, self.bank_y, fq, self.q_y, e.knn_k_grid,
                                  e.knn_temperature_grid or [e.knn_temperature])
        return {"knn_val": scores[(k, t)], "knn_k": k, "knn_temperature": t}
