"""Nearest images and near-duplicate pairs in a user's collection (``selfsup neighbours``), by cosine similarity of
l2-normalised encoder features; the searches themselves are :mod:`selfsup.evaluate.search`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..data.image_reader import read_image
from ..errors import ConfigError, DataError
from ..evaluate.search import near_duplicates, nearest
from .collection import FeatureExtraction, embed_images, embed_run_collection, item_ids, row_labels


@dataclass
class NeighbourSearch:
    """What :func:`find_neighbours` found. ``query_index[q]`` is the collection row query ``q`` is (-1 for an
    image from outside the collection); ``sims``/``idx`` are (Q, k) into the collection; ``duplicates`` holds
    (i, j, similarity) rows of the collection."""
    ids: list[str]
    images: torch.Tensor
    query_ids: list[str]
    query_images: torch.Tensor
    query_index: list[int]
    sims: torch.Tensor
    idx: torch.Tensor
    duplicates: list[tuple[int, int, float]]
    threshold: float
    classes: list[str | None] | None = None  # each collection row's class (a train/ + test/ folder: under the split)
    splits: list[str | None] | None = None  # each collection row's split (train/ + test/ or val/ folders)

    def row_facts(self, i: int) -> list[str]:
        """Class and split of collection row ``i`` ("" where unknown; also for ``i`` = -1, outside the collection)."""
        facts = [(self.classes or [])[i:i + 1] if i >= 0 else [], (self.splits or [])[i:i + 1] if i >= 0 else []]
        return ["" if not f or f[0] is None else f[0] for f in facts]


@dataclass(frozen=True)
class NeighbourQuery:
    """What :func:`find_neighbours` looks up: the image files ``images``, or ``sample`` collection images drawn with
    ``seed`` (one of the two), and the ``k`` nearest images of each."""
    images: Sequence[str | Path] | None = None
    sample: int | None = None
    seed: int = 0
    k: int = 8


def load_query_image(path: str | Path, size: int, channels: int) -> torch.Tensor:
    """One query image as a C×size×size uint8 tensor, read as image folders are (one reader: EXIF orientation,
    transparency over white, centre crop, ...); an unreadable file is a DataError naming it as a query image."""
    return torch.from_numpy(read_image(path, size, channels, name=f"{path} (query image)")[0].copy())


def _collection_row(path: Path, source: Path | None, ids: list[str]) -> int:
    """The row of the collection that the file ``path`` is (-1 when it is not one of the source folder's files)."""
    if source is None:
        return -1
    try:
        rel = path.resolve().relative_to(source.resolve()).as_posix()
    except ValueError:
        return -1
    return ids.index(rel) if rel in ids else -1


def find_neighbours(run_dir: str | Path, source: str | Path | None = None, query: NeighbourQuery = NeighbourQuery(),
                    threshold: float = 0.95, device: str | None = None, batch_size: int = 512,
                    progress: bool = True) -> NeighbourSearch:
    """Embed the collection (the folder ``source``, else the run's training data) with the run's encoder; find the
    ``query.k`` nearest images of each query — the image files ``query.images``, or ``query.sample`` collection
    images drawn with ``query.seed`` — (a query that is in the collection is not its own neighbour), and every pair
    with cosine similarity ≥ ``threshold``."""
    queries, sample, seed, k = query.images, query.sample, query.seed, query.k
    if (queries is None or len(queries) == 0) == (sample is None):
        raise ConfigError("give query images (--query) or a number of collection images to sample (--sample), "
                          "one of the two")
    if k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    if sample is not None and sample < 1:
        raise ConfigError(f"--sample must be at least 1, got {sample}")
    if not 0 < threshold <= 1:
        raise ConfigError(f"--threshold {threshold}: a cosine similarity in (0, 1]")
    emb = embed_run_collection(run_dir, source, device, batch_size, progress)
    ds, feats, backbone, size, device = emb.dataset, emb.features, emb.backbone, emb.image_size, emb.device
    ids = item_ids(ds)
    if sample is not None:
        g = torch.Generator().manual_seed(seed)
        rows = torch.randperm(len(ds), generator=g)[:min(sample, len(ds))].sort().values.tolist()
        q_index, q_ids, q_images, q_feats = rows, [ids[r] for r in rows], ds.images[rows], feats[rows]
    else:
        src = Path(source) if source is not None else None
        q_index, q_ids, imgs = [], [], []
        for p in map(Path, queries):
            if not p.is_file():
                raise DataError(f"query image {p} does not exist")
            row = _collection_row(p, src, ids)
            q_index.append(row)
            q_ids.append(ids[row] if row >= 0 else p.name)
            imgs.append(ds.images[row] if row >= 0 else load_query_image(p, ds.images.shape[-1], ds.channels))
        q_images = torch.stack(imgs)
        outside = [i for i, r in enumerate(q_index) if r < 0]
        q_feats = torch.empty(len(q_index), feats.shape[1])
        if outside:
            q_feats[outside] = embed_images(backbone, q_images[outside], FeatureExtraction(batch_size, device, size),
                                            progress=False)
        inside = [i for i, r in enumerate(q_index) if r >= 0]
        if inside:
            q_feats[inside] = feats[[q_index[i] for i in inside]]
    sims, idx = nearest(feats, q_feats, k, exclude_self=q_index)
    dups = near_duplicates(feats, threshold)
    return NeighbourSearch(ids, ds.images, q_ids, q_images, list(q_index), sims, idx, dups, threshold,
                           row_labels(ds)[1], emb.splits)
