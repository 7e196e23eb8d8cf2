"""Nearest images and near-duplicate pairs in a collection, by cosine similarity of l2-normalised encoder features.

Both searches are exact and run block by block (queries × a block of the collection, then a running top-k; or one
block of pairs at a time), so memory stays bounded by the block sizes: the N×N similarity matrix is never built."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, DataError
from .collection import embed_images, embed_run_collection, item_ids


@torch.inference_mode()
def nearest(features: torch.Tensor, query_features: torch.Tensor, k: int,
            exclude_self: Sequence[int] | torch.Tensor | None = None, chunk: int = 1024,
            bank_chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` most cosine-similar rows of ``features``: (sims, idx), both (Q, k'), most similar first,
    where k' = min(k, rows available). ``exclude_self[q]`` is the row that query ``q`` itself is (never returned as
    its own neighbour) or -1. Queries are searched ``chunk`` at a time against ``bank_chunk`` rows at a time."""
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    bank = F.normalize(features.float(), dim=1)
    queries = F.normalize(query_features.float(), dim=1)
    n, q_total = len(bank), len(queries)
    excl = torch.full((q_total,), -1, dtype=torch.long) if exclude_self is None else \
        torch.as_tensor(exclude_self, dtype=torch.long).reshape(-1)
    if len(excl) != q_total:
        raise ConfigError(f"exclude_self has {len(excl)} entries for {q_total} queries")
    kk = min(k, n - int(bool((excl >= 0).any())))
    if kk < 1:
        raise DataError(f"the collection has {n} image(s): no neighbour to return")
    all_sims, all_idx = [torch.empty(0, kk)], [torch.empty(0, kk, dtype=torch.long)]
    for a in range(0, q_total, chunk):
        q, ex = queries[a:a + chunk], excl[a:a + chunk]
        best_s = torch.empty(len(q), 0)
        best_i = torch.empty(len(q), 0, dtype=torch.long)
        for b in range(0, n, bank_chunk):
            s = q @ bank[b:b + bank_chunk].T
            rows = ((ex >= b) & (ex < b + s.shape[1])).nonzero().flatten()
            s[rows, ex[rows] - b] = -float("inf")
            top_s, top_i = s.topk(min(kk, s.shape[1]), dim=1)
            cand_s, cand_i = torch.cat([best_s, top_s], 1), torch.cat([best_i, top_i + b], 1)
            best_s, pos = cand_s.topk(min(kk, cand_s.shape[1]), dim=1)
            best_i = cand_i.gather(1, pos)
        all_sims.append(best_s)
        all_idx.append(best_i)
    return torch.cat(all_sims), torch.cat(all_idx)


@torch.inference_mode()
def near_duplicates(features: torch.Tensor, threshold: float, chunk: int = 4096,
                    max_pairs: int = 1_000_000) -> list[tuple[int, int, float]]:
    """Every pair (i, j), i < j, whose cosine similarity is ≥ ``threshold``, as (i, j, similarity), most similar
    first (ties by i, then j). Computed ``chunk`` × ``chunk`` block by block over the upper triangle; more than
    ``max_pairs`` pairs raises (the threshold is too low for the collection)."""
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold {threshold}: a cosine similarity in (0, 1]")
    if chunk < 1:
        raise ConfigError(f"chunk must be positive, got {chunk}")
    f = F.normalize(features.float(), dim=1)
    n = len(f)
    ii, jj, ss = [], [], []
    found = 0
    for a in range(0, n, chunk):
        fa = f[a:a + chunk]
        for b in range(a, n, chunk):
            s = fa @ f[b:b + chunk].T
            hit = s >= threshold
            if a == b:
                hit &= torch.ones_like(hit).triu(diagonal=1)
            i, j = hit.nonzero(as_tuple=True)
            found += len(i)
            if found > max_pairs:
                raise DataError(f"more than {max_pairs} pairs have cosine similarity ≥ {threshold}: raise the "
                                f"threshold")
            ii.append(i + a)
            jj.append(j + b)
            ss.append(s[i, j])
    if not ii:
        return []
    i, j, s = torch.cat(ii).numpy(), torch.cat(jj).numpy(), torch.cat(ss).numpy()
    order = np.lexsort((j, i, -s))
    return [(int(i[o]), int(j[o]), float(s[o])) for o in order]


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


def load_query_image(path: str | Path, size: int, channels: int) -> torch.Tensor:
    """One query image as a C×size×size uint8 tensor, converted and resized as image folders are."""
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read query image {path}: {e}") from None
    return torch.from_numpy((a[None] if a.ndim == 2 else a.transpose(2, 0, 1)).copy())


def _collection_row(path: Path, source: Path | None, ids: list[str]) -> int:
    """The row of the collection that the file ``path`` is (-1 when it is not one of the source folder's files)."""
    if source is None:
        return -1
    try:
        rel = path.resolve().relative_to(source.resolve()).as_posix()
    except ValueError:
        return -1
    return ids.index(rel) if rel in ids else -1


def find_neighbours(run_dir: str | Path, source: str | Path | None = None,
                    queries: Sequence[str | Path] | None = None, sample: int | None = None, k: int = 8,
                    threshold: float = 0.95, device: str | None = None, seed: int = 0, batch_size: int = 512,
                    progress: bool = True) -> NeighbourSearch:
    """Embed the collection (the folder ``source``, else the run's training data) with the run's encoder; find the
    ``k`` nearest images of each query — the image files ``queries``, or ``sample`` collection images drawn with
    ``seed`` — (a query that is in the collection is not its own neighbour), and every pair with cosine similarity
    ≥ ``threshold``."""
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
            q_feats[outside] = embed_images(backbone, q_images[outside], batch_size, device, size, progress=False)
        inside = [i for i, r in enumerate(q_index) if r >= 0]
        if inside:
            q_feats[inside] = feats[[q_index[i] for i in inside]]
    sims, idx = nearest(feats, q_feats, k, exclude_self=q_index)
    dups = near_duplicates(feats, threshold)
    return NeighbourSearch(ids, ds.images, q_ids, q_images, list(q_index), sims, idx, dups, threshold)
