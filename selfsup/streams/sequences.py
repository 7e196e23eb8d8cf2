"""The benchmark sequences of the streaming study, built from a labelled data set (Hu et al. 2022 style).

- ``instance``: random equal chunks of the training set (no distribution shift).
- ``random_class``: the classes split at random across chunks.
- ``distant_class``: semantically grouped classes per chunk (for Fashion-MNIST: T-shirt+shirt, pullover+coat,
  footwear, trouser+dress, bag), so successive chunks are far apart.
- ``domain``: each chunk a different domain: clean Fashion-MNIST, Gaussian noise, edges only, inverted (MNIST-C
  style, see :mod:`selfsup.augment.corruptions`) and sklearn digits as a far domain; disjoint Fashion-MNIST images
  per chunk.
- ``far_domain``: a larger shift than ``domain``: every step flips the images' polarity or frequency content —
  clean Fashion-MNIST, inverted, heavily blurred (Gaussian blur at the strongest severity, applied twice: σ ≈ 2.8 px),
  Sobel edge maps, sklearn digits upscaled to 28×28 (and, for a sixth chunk, inverted digits); disjoint
  Fashion-MNIST images per chunk, so the last chunks share neither objects nor low-level statistics with the first.

Each chunk comes with an evaluation task (labelled probe-training and test images of its classes or domain), from
which the accuracy matrix R[i][j] is measured; ``full`` is the whole test set.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..robustness.corruptions import corrupt
from ..data.sources import ImageDataset, digits

FMNIST_DISTANT_GROUPS = [[0, 6], [2, 4], [5, 7, 9], [1, 3], [8]]
DOMAINS = ["clean", "gaussian_noise", "edges", "invert", "digits"]
FAR_DOMAINS = ["clean", "invert", "heavy_blur", "edges", "digits", "digits_invert"]
KINDS = ("instance", "random_class", "distant_class", "domain", "far_domain")


@dataclass
class EvalTask:
    """Labelled images to fit a probe on (``train``) and to score it on (``test``)."""
    name: str
    train: ImageDataset
    test: ImageDataset


@dataclass
class ChunkSequence:
    kind: str
    chunks: list[ImageDataset]  # training chunks (labels kept only for evaluation bookkeeping)
    tasks: list[EvalTask]  # one per chunk: its classes / domain
    full: EvalTask  # the whole (clean) test set
    sources: list[np.ndarray | None] = field(default_factory=list)  # domain kinds: each chunk's rows of the
    # training set (None: not drawn from it, e.g. digits)

    def describe(self) -> list[str]:
        return [f"{c.name}: {len(c)} images" for c in self.chunks]


def _take(ds: ImageDataset, n: int, rng: np.random.Generator, name: str) -> ImageDataset:
    idx = np.sort(rng.choice(len(ds), min(n, len(ds)), replace=False))
    return ds.subset(idx, name)


def _class_sets(kind: str, num_classes: int, n_chunks: int, seed: int) -> list[list[int]]:
    if kind == "distant_class":
        if num_classes != 10 or n_chunks != 5:
            raise ValueError("distant_class is defined for Fashion-MNIST's 10 classes in 5 chunks")
        return FMNIST_DISTANT_GROUPS
    perm = np.random.default_rng(seed).permutation(num_classes)
    return [sorted(int(c) for c in part) for part in np.array_split(perm, n_chunks)]


def _transform(images: torch.Tensor, dom: str, seed: int) -> torch.Tensor:
    """``images`` in domain ``dom`` (a corruption at severity 3, or ``heavy_blur``: the strongest Gaussian blur
    twice)."""
    if dom == "heavy_blur":
        return corrupt(corrupt(images, "gaussian_blur", 5, seed), "gaussian_blur", 5, seed)
    return corrupt(images, dom, 3, seed)


def build_sequence(kind: str, train: ImageDataset, test: ImageDataset, n_chunks: int = 5, seed: int = 0,
                   eval_train: int = 10000, eval_test: int = 10000) -> ChunkSequence:
    """Chunks of ``train`` (labelled) for ``kind``; evaluation tasks drawn from ``train`` (probe fitting) and
    ``test`` (scoring), at most ``eval_train``/``eval_test`` images in all."""
    if kind not in KINDS:
        raise ValueError(f"unknown sequence {kind!r} (choose {', '.join(KINDS)})")
    if train.labels is None or test.labels is None:
        raise ValueError("building a benchmark sequence needs a labelled data set")
    rng = np.random.default_rng(seed)
    y = train.labels.numpy()
    num_classes = int(max(y.max(), test.labels.max())) + 1
    full = EvalTask("all", _take(train, eval_train, rng, "probe-train"), _take(test, eval_test, rng, "test"))
    if kind == "instance":
        parts = np.array_split(rng.permutation(len(train)), n_chunks)
        chunks = [train.subset(np.sort(p), f"chunk{i + 1}") for i, p in enumerate(parts)]
        # no shift: every chunk's task is the whole problem, on disjoint test slices
        tparts = np.array_split(rng.permutation(len(full.test)), n_chunks)
        rparts = np.array_split(rng.permutation(len(full.train)), n_chunks)
        tasks = [EvalTask(f"slice{i + 1}", full.train.subset(rp), full.test.subset(tp))
                 for i, (rp, tp) in enumerate(zip(rparts, tparts))]
        return ChunkSequence(kind, chunks, tasks, full)
    if kind in ("random_class", "distant_class"):
        sets = _class_sets(kind, num_classes, n_chunks, seed)
        chunks, tasks = [], []
        ft, fte = full.train.labels.numpy(), full.test.labels.numpy()
        for i, cs in enumerate(sets):
            names = "+".join(train.classes[c] if c < len(train.classes) else str(c) for c in cs)
            chunks.append(train.subset(np.flatnonzero(np.isin(y, cs)), f"chunk{i + 1} ({names})"))
            tasks.append(EvalTask(names, full.train.subset(np.flatnonzero(np.isin(ft, cs))),
                                  full.test.subset(np.flatnonzero(np.isin(fte, cs)))))
        return ChunkSequence(kind, chunks, tasks, full)
    # domain incremental (domain, far_domain)
    if train.images.shape[1:] != (1, 28, 28):
        raise ValueError(f"the {kind} sequence is defined for 28x28 grey images (Fashion-MNIST)")
    domains = DOMAINS if kind == "domain" else FAR_DOMAINS
    doms = domains[:n_chunks] if n_chunks <= len(domains) else None
    if doms is None:
        raise ValueError(f"the {kind} sequence has at most {len(domains)} chunks")
    parts = np.array_split(rng.permutation(len(train)), n_chunks)
    per_train, per_test = max(200, eval_train // n_chunks), max(200, eval_test // n_chunks)
    chunks, tasks, sources = [], [], []
    for i, dom in enumerate(doms):
        if dom.startswith("digits"):
            dtr, dte = digits("train"), digits("test")
            if dom == "digits_invert":
                dtr, dte = (ImageDataset(255 - d.images, d.labels, d.classes, d.name) for d in (dtr, dte))
            chunks.append(ImageDataset(dtr.images, dtr.labels, dtr.classes, f"chunk{i + 1} ({dom})"))
            tasks.append(EvalTask(dom, dtr, dte))
            sources.append(None)
            continue
        src = train.subset(np.sort(parts[i]))
        ptr, pte = _take(train, per_train, rng, "t"), _take(test, per_test, rng, "t")
        if dom != "clean":
            src = ImageDataset(_transform(src.images, dom, seed + i), src.labels, src.classes)
            ptr = ImageDataset(_transform(ptr.images, dom, seed + 100 + i), ptr.labels, ptr.classes)
            pte = ImageDataset(_transform(pte.images, dom, seed + 200 + i), pte.labels, pte.classes)
        chunks.append(ImageDataset(src.images, src.labels, src.classes, f"chunk{i + 1} ({dom})"))
        tasks.append(EvalTask(dom, ptr, pte))
        sources.append(np.sort(parts[i]))
    return ChunkSequence(kind, chunks, tasks, full, sources)
