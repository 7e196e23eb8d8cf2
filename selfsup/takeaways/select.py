"""Which images to label first, from the encoder's l2-normalised features.

- ``kcenter``: k-centre greedy (Sener & Savarese 2018, "Active learning for convolutional neural networks: a core-set
  approach"): repeatedly take the point farthest from every point taken so far (a running min-distance vector, one
  matrix-vector product per pick: O(N·K·D)); its covering radius is at most twice the optimum's.
- ``typical``: typicality (Hacohen et al. 2022, TypiClust): cluster the features into K clusters with k-means and take
  from each cluster its most typical point — the highest inverse mean distance to its 20 nearest neighbours within
  the cluster. Picks are ranked largest cluster first.
- ``random``: a seeded uniform draw without replacement.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans, MiniBatchKMeans

from ..atomic import atomic_write_text
from ..errors import ConfigError
from .collection import embed_run_collection, item_ids

STRATEGIES = ("kcenter", "kcenter_dense", "typical", "random")
DENSE_FRACTION = 0.5
"""kcenter_dense covers only this fraction of the collection: its most typical (densest) images."""
TYPICALITY_K = 20
"""Neighbours within the cluster whose mean distance defines a point's typicality (TypiClust's k)."""
MINIBATCH_ABOVE = 20000
"""Collections larger than this are clustered with MiniBatchKMeans instead of KMeans."""


@torch.inference_mode()
def kcenter_greedy(features: torch.Tensor, n: int, seed: int = 0, start: str = "random",
                   chunk: int = 65536) -> list[int]:
    """k-centre greedy on l2-normalised ``features``: the first point is drawn with ``seed`` (``start="random"``)
    or is the point nearest the mean (``start="mean"``); each next one is the point whose distance to its nearest
    chosen point is largest (ties: the lowest index)."""
    f = F.normalize(features.float(), dim=1)
    n_all = len(f)
    if start == "random":
        first = int(torch.randint(n_all, (1,), generator=torch.Generator().manual_seed(seed)))
    elif start == "mean":
        first = int(((f - f.mean(0)) ** 2).sum(1).argmin())
    else:
        raise ConfigError(f"k-centre start {start!r}: choose random or mean")
    picked = [first]
    # the nearest picked point of each row, as its cosine similarity (on unit vectors the squared euclidean
    # distance is 2 - 2 cos, so the farthest row is the one of least similarity): one matrix-vector product a pick
    max_sim = torch.full((n_all,), -float("inf"))
    taken = torch.zeros(n_all, dtype=torch.bool)
    for _ in range(n - 1):
        c = f[picked[-1]]
        taken[picked[-1]] = True
        for a in range(0, n_all, chunk):
            torch.maximum(max_sim[a:a + chunk], f[a:a + chunk] @ c, out=max_sim[a:a + chunk])
        picked.append(int(max_sim.masked_fill(taken, float("inf")).argmin()))
    return picked


@torch.inference_mode()
def kcenter_dense(features: torch.Tensor, n: int, seed: int = 0, fraction: float = DENSE_FRACTION) -> list[int]:
    """k-centre greedy over the ``fraction`` most typical rows only (typicality on l2-normalised features): plain
    k-centre spends a small budget on outliers, far from everything and unlike the test images; dropping the
    sparsest part of the collection first keeps the coverage without them."""
    f = F.normalize(features.float(), dim=1)
    keep = max(n, int(round(fraction * len(f))))
    dense = torch.argsort(-typicality(f), stable=True)[:keep]
    return dense[kcenter_greedy(f[dense], n, seed)].tolist()


def typicality(features: torch.Tensor, k: int = TYPICALITY_K, chunk: int = 2048) -> torch.Tensor:
    """1 / (mean euclidean distance to the ``k`` nearest other rows + 1e-8) of each row of ``features`` (k is
    capped at rows − 1; a single row gets typicality +inf)."""
    n = len(features)
    if n == 1:
        return torch.full((1,), float("inf"))
    kk = min(k, n - 1)
    out = torch.empty(n)
    for a in range(0, n, chunk):
        d = torch.cdist(features[a:a + chunk], features)
        d[torch.arange(len(d)), torch.arange(a, a + len(d))] = float("inf")
        out[a:a + chunk] = 1.0 / (d.topk(kk, dim=1, largest=False).values.mean(1) + 1e-8)
    return out


@torch.inference_mode()
def typical_clusters(features: torch.Tensor, n: int, seed: int = 0) -> list[int]:
    """TypiClust-style: ``n`` k-means clusters of the l2-normalised features, the most typical point of each, largest
    cluster first. Should k-means leave fewer than ``n`` clusters non-empty, the rest are filled with each
    cluster's next most typical points, round robin from the largest cluster."""
    f = F.normalize(features.float(), dim=1)
    x = f.numpy()
    # scikit-learn's k-means++ seeding costs minutes for hundreds of clusters on a large collection: there the
    # mini-batch k-means starts from the best of three random draws
    km = (MiniBatchKMeans(n, init="random", n_init=3, batch_size=max(2048, 3 * n), random_state=seed)
          if len(f) > MINIBATCH_ABOVE else KMeans(n, random_state=seed, n_init=1))
    assign = km.fit_predict(x)
    members = [np.flatnonzero(assign == c) for c in range(n)]
    members = sorted((m for m in members if len(m)), key=lambda m: (-len(m), m[0]))
    ranked = []
    for m in members:
        t = typicality(f[torch.as_tensor(m)])
        order = torch.argsort(-t, stable=True).numpy()
        ranked.append(m[order].tolist())
    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        picked += [r[depth] for r in ranked if depth < len(r)][: n - len(picked)]
        depth += 1
    return picked


def select_to_label(features: torch.Tensor, n: int, strategy: str = "typical", seed: int = 0) -> list[int]:
    """The ``n`` rows of ``features`` to label first, in order, by ``strategy`` (kcenter, kcenter_dense, typical or
    random)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r} (choose {', '.join(STRATEGIES)})")
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    if n > len(features):
        raise ConfigError(f"--n {n} is more than the {len(features)} images in the collection")
    if strategy == "kcenter":
        return kcenter_greedy(features, n, seed)
    if strategy == "kcenter_dense":
        return kcenter_dense(features, n, seed)
    if strategy == "typical":
        return typical_clusters(features, n, seed)
    return torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:n].tolist()


@dataclass(frozen=True)
class Selection:
    """How many images to choose (``n``), by which of :data:`STRATEGIES`, with which ``seed``."""
    n: int = 100
    strategy: str = "typical"
    seed: int = 0


def select_from_collection(run_dir: str | Path, source: str | Path | None = None, selection: Selection = Selection(),
                           device: str | None = None, out: str | Path | None = None, batch_size: int = 512,
                           progress: bool = True) -> list[dict]:
    """Embed the collection (the folder ``source``, else the run's training data) with the run's encoder and choose
    the ``selection.n`` images to label first; one dict per pick (rank, id, and label/class when the collection has
    labels, split when the folder is laid out as train/ + test/ or val/), also written to the CSV ``out`` when
    given."""
    n, strategy, seed = selection.n, selection.strategy, selection.seed
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r} (choose {', '.join(STRATEGIES)})")
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    emb = embed_run_collection(run_dir, source, device, batch_size, progress)
    ds, feats = emb.dataset, emb.features
    ids = item_ids(ds)
    with_split = source is not None and any(s is not None for s in emb.splits)
    rows = []
    for rank, i in enumerate(select_to_label(feats, n, strategy, seed), start=1):
        row = {"rank": rank, "id": ids[i]}
        if ds.labels is not None:
            y = int(ds.labels[i])
            row["label"] = y
            row["class"] = ds.classes[y] if 0 <= y < len(ds.classes) else str(y)
        if with_split:
            row["split"] = emb.splits[i]
        rows.append(row)
    if out is not None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, buf.getvalue())
    return rows
