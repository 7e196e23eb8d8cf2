"""Each training step's batch: which images (a pure function of the seed and the step, so a run resumes exactly
mid-epoch) and their uint8 pixels, for this process's share of the global batch.

The order of epoch e is a permutation drawn from the seed and e (:func:`epoch_order`); the batch composer
(:class:`~selfsup.data.batches.BatchComposer`) turns it into step indices. Under DDP, rank r of W takes the r-th of W
equal blocks of the global batch (positions r·n … r·n + n − 1), so the W processes together see exactly the batch one
process would, in the order :func:`selfsup.distributed.gather` concatenates their rows: a loss over the gathered
batch, or anything drawn for the global batch and cut by rank (MAE's masks), sees what one process sees. In-RAM sets are
indexed directly; a lazy set (:class:`~selfsup.data.lazy.LazyImages`) is decoded batch by batch — in
``workers`` DataLoader processes, ``prefetch`` batches each ahead, when workers > 0 — so each rank and worker
decodes only its own images and memory is bounded by the batch and the prefetch.

:func:`image_batches` reads any image set in order, a batch at a time, the same way (feature extraction for the
evaluation and the embeddings: a lazy set is decoded in the workers, never whole in RAM).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .batches import BatchComposer
from .sources import ImageDataset


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch ``epoch`` (a generator of its own per epoch: any epoch is reached directly)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@dataclass
class StepBatch:
    images: torch.Tensor  # uint8 (B / world, C, H, W)
    idx: torch.Tensor  # their indices in the data set
    bad: int = 0  # unreadable files replaced in this batch (lazy sets with skip_bad_images)


@dataclass(frozen=True)
class BatchPlan:
    """Which steps' batches a rank reads (steps ``start`` … ``total`` − 1 of epochs of ``steps_per_epoch`` steps,
    ordered by ``seed``, composed by ``composer``; rank ``rank`` of ``world`` takes its share) and how a lazy set is
    decoded (``workers`` DataLoader processes, ``prefetch`` batches each ahead; 0 workers: in this process)."""
    composer: BatchComposer
    seed: int
    steps_per_epoch: int
    start: int
    total: int
    rank: int = 0
    world: int = 1
    workers: int = 0
    prefetch: int = 2


class _StepIndices:
    """Batch sampler: this rank's indices of steps start … total − 1 (computed in the training process)."""

    def __init__(self, n: int, plan: BatchPlan):
        self.n, self.composer, self.seed, self.spe = n, plan.composer, plan.seed, plan.steps_per_epoch
        self.start, self.total, self.rank, self.world = plan.start, plan.total, plan.rank, plan.world
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch = step // self.spe
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, epoch_order(self.n, self.seed, epoch)
        idx = self.composer.indices(self._perm, step % self.spe, step)
        n = len(idx) // self.world
        return idx[self.rank * n:(self.rank + 1) * n]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.total):
            yield self.indices(step).tolist()

    def __len__(self) -> int:
        return self.total - self.start


class _Decode(Dataset):
    """Decodes one batch of a lazy set in a worker; a decoding error comes back as its message (raised as one
    DataError in the training process, not as a worker traceback)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitems__(self, idx: list[int]):
        try:
            x, bad = self.images.fetch(idx)
        except DataError as e:
            return str(e)
        return StepBatch(x, torch.tensor(idx, dtype=torch.long), bad)


def _as_is(batch):
    return batch


def step_batches(ds: ImageDataset, plan: BatchPlan) -> Iterator[StepBatch]:
    """The batches of steps ``plan.start`` … ``plan.total`` − 1 for this rank, in order."""
    sampler = _StepIndices(len(ds), plan)
    if not ds.lazy:
        for idx in sampler:
            idx = torch.tensor(idx, dtype=torch.long)
            yield StepBatch(ds.images[idx], idx)
        return
    if plan.workers == 0:
        batches = (_Decode(ds.images).__getitems__(idx) for idx in sampler)
    else:
        batches = iter(DataLoader(_Decode(ds.images), batch_sampler=sampler, num_workers=plan.workers,
                                  prefetch_factor=plan.prefetch, collate_fn=_as_is, persistent_workers=False))
    for b in batches:
        if isinstance(b, str):
            raise DataError(b)
        yield b


def image_batches(images, batch_size: int, workers: int = 0, prefetch: int = 2) -> Iterator[torch.Tensor]:
    """The rows of ``images`` (an in-RAM tensor or a lazy set), ``batch_size`` at a time, in order. A lazy set is
    decoded in ``workers`` DataLoader processes (``prefetch`` batches each ahead) when workers > 0 and there is more
    than one batch; otherwise in this process."""
    n = len(images)
    if isinstance(images, torch.Tensor) or workers == 0 or n <= batch_size:
        for i in range(0, n, batch_size):
            yield images[i:i + batch_size]
        return
    sampler = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    for b in DataLoader(_Decode(images), batch_sampler=sampler, num_workers=workers, prefetch_factor=prefetch,
                        collate_fn=_as_is, persistent_workers=False):
        if isinstance(b, str):
            raise DataError(b)
        yield b.images
