"""Which images make up each pre-training step's batch, and which of their labels pre-training may see.

Known labels: ``data.labelled_fraction`` keeps the labels of a class-balanced, seeded subset of the training images
(:func:`labelled_subset`); the others read −1 ("unlabelled") during pre-training. Evaluation keeps the true labels.

Composition (:class:`BatchComposer`): with ``data.labelled_per_batch`` = L > 0, each step's ``train.batch_size`` = B
images are B − L unlabelled images from the epoch's permutation followed by L labelled images, L / C of each of the C
labelled classes, drawn by a generator seeded from the seed and the step, so any step's batch is reached directly (a
resumed run, or a data-loading worker ahead of training, draws the same ones). The fresh part skips the images whose
label is known, so the labelled images of a batch are exactly its class-balanced part (SuNCEt's support batch, as
the authors' ClassStratifiedSampler); when every label is known it is the plain permutation.
An epoch stays N // B steps of B images (the compute of a plain epoch); its B − L fresh images per step walk through
the permutation's unlabelled images (wrapping round if there are too few). L = 0 is the plain batch: B images of the
permutation.
"""
from __future__ import annotations

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .sources import ImageDataset

_SUBSET_STREAM = 4243  # a seed stream of its own: not the draws of train_val_split with the same seed


def labelled_subset(labels: torch.Tensor, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced seeded subset: round(fraction · n_c) images of every class c (at
    least one). The same labels, fraction and seed give the same subset."""
    y = labels.numpy()
    g = np.random.default_rng([seed, _SUBSET_STREAM])
    keep = [g.permutation(np.flatnonzero(y == c))[:max(1, int(round(fraction * np.sum(y == c))))]
            for c in np.unique(y)]
    return np.sort(np.concatenate(keep))


def known_labels(labels: torch.Tensor | None, fraction: float | None, seed: int) -> torch.Tensor | None:
    """The labels pre-training sees: all of them (``fraction`` None), or −1 outside :func:`labelled_subset`."""
    if labels is None or fraction is None:
        return labels
    out = torch.full_like(labels, -1)
    keep = torch.from_numpy(labelled_subset(labels, fraction, seed))
    out[keep] = labels[keep]
    return out


class BatchComposer:
    """Each step's batch indices (:meth:`indices`) and the labels pre-training sees (:meth:`labels_of`)."""

    def __init__(self, n_images: int, batch_size: int, labels: torch.Tensor | None = None,
                 labelled_per_batch: int = 0, seed: int = 0):
        self.labels, self.labelled_per_batch = labels, labelled_per_batch
        self.fresh = batch_size - labelled_per_batch  # images per step from the epoch's permutation
        self.seed = seed
        self.by_class: list[torch.Tensor] = []
        if labelled_per_batch:
            if labels is None:
                raise DataError("data.labelled_per_batch needs a labelled data set")
            classes = torch.unique(labels[labels >= 0])
            if labelled_per_batch >= batch_size or len(classes) == 0 or labelled_per_batch % len(classes):
                raise DataError(f"data.labelled_per_batch {labelled_per_batch} must be a multiple of the "
                                f"{len(classes)} labelled classes and below train.batch_size {batch_size}")
            self.by_class = [torch.nonzero(labels == c).flatten() for c in classes.tolist()]

    def indices(self, perm: torch.Tensor, step_in_epoch: int, step: int) -> torch.Tensor:
        """Step ``step``'s batch (the ``step_in_epoch``-th of its epoch, whose order is ``perm``): B − L unlabelled
        images of the permutation, then L / C labelled images of each class."""
        pos = step_in_epoch * self.fresh
        if not self.labelled_per_batch:
            return perm[pos:pos + self.fresh]
        unlabelled = perm[self.labels[perm] < 0]  # the labelled images come in the class-balanced part only
        unlabelled = unlabelled if len(unlabelled) else perm
        idx = unlabelled[(pos + torch.arange(self.fresh)) % len(unlabelled)]
        k = self.labelled_per_batch // len(self.by_class)
        g = torch.Generator().manual_seed(self.seed * 15_485_863 + 11 + 1_000_003 * step)
        picks = [members[torch.randperm(len(members), generator=g)[:k]] if k <= len(members) else
                 members[torch.randint(len(members), (k,), generator=g)] for members in self.by_class]
        return torch.cat([idx, *picks])

    def labels_of(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Labels of the images ``ids`` (−1: unknown, and for ids < 0, images that are not the data set's)."""
        if self.labels is None:
            return None
        return torch.where(ids >= 0, self.labels[ids.clamp_min(0)], torch.full_like(ids, -1))


def batch_composer(data: DataConfig, train: ImageDataset, batch_size: int, seed: int) -> BatchComposer:
    """The pre-training batches ``data.labelled_fraction`` and ``data.labelled_per_batch`` ask for."""
    if data.labelled_fraction is not None and train.labels is None:
        raise DataError(f"data.labelled_fraction needs a labelled data set ({data.source} has no labels)")
    return BatchComposer(len(train), batch_size, known_labels(train.labels, data.labelled_fraction, seed),
                         data.labelled_per_batch, seed)
