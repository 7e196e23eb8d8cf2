"""Frozen features of a backbone: an inference copy (eval mode, Conv→BatchNorm folded) and batched extraction.

Protocol: features come from the backbone in eval mode (BatchNorm running statistics), no augmentation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..data import image_batches, train_val_split
from .probes import LabelledFeatures


def inference_copy(backbone: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy with every Conv2d→BatchNorm2d pair folded into one convolution (same outputs, fewer
    memory passes) and weights in channels_last when asked."""
    m = copy.deepcopy(backbone).eval()
    for mod in m.modules():
        children = list(mod.named_children())
        for (n1, c1), (n2, c2) in zip(children, children[1:]):
            if isinstance(c1, nn.Conv2d) and isinstance(c2, nn.BatchNorm2d) and c2.track_running_stats:
                setattr(mod, n1, fuse_conv_bn_eval(c1, c2))
                setattr(mod, n2, nn.Identity())
    return m.to(memory_format=torch.channels_last) if channels_last else m


@torch.inference_mode()
def extract_features(backbone: nn.Module, images: torch.Tensor, batch_size: int = 256,
                     device: str | torch.device = "cpu", channels_last: bool = True, workers: int = 0
                     ) -> torch.Tensor:
    """Backbone features (eval mode: BatchNorm running statistics, no augmentation) of uint8 images (0..255) or
    float images in [0, 1], used as they are (no quantisation). A lazy image set is decoded batch by batch, in
    ``workers`` DataLoader processes when workers > 0 (:func:`selfsup.data.image_batches`)."""
    model = inference_copy(backbone, channels_last).to(device)
    out = []
    for x in image_batches(images, batch_size, workers):
        x = x.to(device)
        x = x.float() if x.is_floating_point() else x.float().div_(255)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x).float().cpu())
    return torch.cat(out)


@dataclass
class SuiteFeatures:
    """What the suite scores: training features ``train`` (labels None: unlabelled) with the indices of their
    fitting and validation parts ``parts``, test features ``test`` (labels None: unlabelled), and ``sample``: up to
    2000 images of the scored split (for the alignment of two augmented views)."""
    train: LabelledFeatures
    parts: tuple
    test: LabelledFeatures
    sample: torch.Tensor

    @property
    def labelled(self) -> bool:
        return self.train.labels is not None and self.test.labels is not None


def suite_features(backbone, datasets, cfg, device, results: dict) -> SuiteFeatures:
    """The backbone's features of the training and test splits of ``datasets``; without a test split it scores
    the validation split and chooses on a split of the rest (and says so in ``results["note"]``)."""
    train_ds, test_ds = datasets
    cl, e = cfg.train.channels_last, cfg.eval
    w = cfg.data.workers  # a lazy set is decoded in DataLoader workers, a batch at a time
    f_train = extract_features(backbone, train_ds.images, e.batch_size, device, cl, w)
    tr, va = train_val_split(len(train_ds), cfg.data.val_fraction, cfg.seed, train_ds.labels)
    if test_ds is None:  # no test split: score on the validation split, choose on a split of the rest
        sample = train_ds.images[va[:2000]]  # (a lazy set decodes only these)
        y_test = train_ds.labels[va] if train_ds.labels is not None else None
        f_test = f_train[va]
        sub_tr, sub_va = train_val_split(len(tr), cfg.data.val_fraction, cfg.seed + 1,
                                         None if train_ds.labels is None else train_ds.labels[tr])
        f_train, y_train_all = f_train[tr], (train_ds.labels[tr] if train_ds.labels is not None else None)
        tr, va = sub_tr, sub_va
        results["note"] = "no test split: scored on the validation split"
    else:
        sample, y_test = test_ds.images[:2000], test_ds.labels
        f_test = extract_features(backbone, test_ds.images, e.batch_size, device, cl, w)
        y_train_all = train_ds.labels
    return SuiteFeatures(LabelledFeatures(f_train, y_train_all), (tr, va), LabelledFeatures(f_test, y_test), sample)
