"""Similarity search: each query's nearest rows (:func:`nearest`, cosine; :func:`top_k`, inner product as given) and
near-duplicate pairs (:func:`near_duplicates`).

Exact search is the default wherever it is fast enough: it runs block by block in torch (queries × a block of the
collection, then a running top-k; or one block of pairs at a time), so memory stays bounded by the block sizes and the
N×N similarity matrix is never built. It costs queries × rows dot products, so an all-against-all search grows as N²
(minutes at 100 000 rows of 256-d on 2 cores, hours at a million). Beyond :attr:`Approximate.exact_up_to` (queries
× rows above ``exact_up_to``², i.e. an all-against-all search of more rows, or a few queries against many more), the
search goes through a faiss inverted-file index (IVF: k-means cells, each query scanning the ``nprobe`` nearest
cells): results are then approximate (recall@k against exact search is measured in benchmarks/million_vectors.py)
and their similarities are faiss's dot products, which may differ from torch's in the last bits. faiss's exact flat
index is not used for the exact path: it is no faster than the blocked torch search (the same matrix products) and
its similarities differ in the last bits, where the exact results here stay those of the torch search."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError

EXACT_UP_TO = 100_000
"""Rows up to which an all-against-all search stays exact (see :class:`Approximate`). Measured with
benchmarks/million_vectors.py at 50 000 256-d rows on a 2-core AVX-512 EPYC (shared, load ≈ 8): top-10 of every row
66 s exact, 18 s by IVF (recall@10 0.994); pairs ≥ 0.95 41 s exact, 9 s by IVF (all 499 found). Exact grows as N²:
≈ 3-4 min at 100 000 rows, hours at a million."""


@dataclass(frozen=True)
class Approximate:
    """When and how a search goes approximate. Exact while queries × rows ≤ ``exact_up_to``²; beyond, a faiss IVF
    index of ``nlist`` cells (default 4·√rows, at least 40 training rows per cell), trained by 10 k-means iterations
    on 40 rows per cell drawn with ``seed``, each query scanning the ``nprobe`` cells nearest to it (default
    max(16, nlist / 64): 62 of 4 000 cells at a million rows)."""
    exact_up_to: int = EXACT_UP_TO
    nlist: int | None = None
    nprobe: int | None = None
    seed: int = 0

    def exact(self, queries: int, rows: int) -> bool:
        return queries * rows <= self.exact_up_to ** 2


EXACT = Approximate(exact_up_to=2 ** 62)
"""Always exact."""


def _excluded(exclude_self: Sequence[int] | torch.Tensor | None, q_total: int) -> torch.Tensor:
    excl = torch.full((q_total,), -1, dtype=torch.long) if exclude_self is None else \
        torch.as_tensor(exclude_self, dtype=torch.long).reshape(-1).cpu()
    if len(excl) != q_total:
        raise ConfigError(f"exclude_self has {len(excl)} entries for {q_total} queries")
    return excl


@torch.inference_mode()
def _exact_top_k(bank: torch.Tensor, queries: torch.Tensor, kk: int, excl: torch.Tensor,
                 blocks: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact search: ``blocks`` = (queries, bank rows) per block; ``excl`` on the CPU."""
    chunk, bank_chunk = blocks
    n, q_total = len(bank), len(queries)
    all_sims = [torch.empty(0, kk, device=bank.device)]
    all_idx = [torch.empty(0, kk, dtype=torch.long, device=bank.device)]
    for a in range(0, q_total, chunk):
        q, ex = queries[a:a + chunk], excl[a:a + chunk].to(bank.device)
        best_s = torch.empty(len(q), 0, device=bank.device)
        best_i = torch.empty(len(q), 0, dtype=torch.long, device=bank.device)
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


def ivf_index(rows: np.ndarray, approx: Approximate = Approximate()) -> faiss.IndexIVFFlat:
    """A faiss inner-product IVF index over ``rows`` (float32, C-contiguous), trained and filled."""
    n, d = rows.shape
    nlist = approx.nlist or max(1, min(int(4 * n ** 0.5), n // 40))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.niter = approx.seed, 10
    train = rows
    if n > 40 * nlist:
        train = rows[np.sort(np.random.default_rng(approx.seed).choice(n, 40 * nlist, replace=False))]
    index.train(train)
    index.add(rows)
    index.nprobe = min(nlist, approx.nprobe or max(16, nlist // 64))
    return index


def _as_faiss(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().float().cpu().numpy())


@torch.inference_mode()
def _approximate_top_k(bank: torch.Tensor, queries: torch.Tensor, kk: int, excl: torch.Tensor,
                       settings: tuple[Approximate, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The IVF search, ``chunk`` queries at a time; rows where the probed cells held fewer than ``kk`` candidates
    are searched again exactly. Each row is ordered by similarity, ties by row index."""
    approx, chunk = settings
    index = ivf_index(_as_faiss(bank), approx)
    extra = int(bool((excl >= 0).any()))
    sims, idx = [np.empty((0, kk), np.float32)], [np.empty((0, kk), np.int64)]
    for a in range(0, len(queries), chunk):
        d, i = index.search(_as_faiss(queries[a:a + chunk]), kk + extra)
        d[i == excl[a:a + chunk, None].numpy()] = -np.inf  # a query's own row goes last, then is cut
        order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), -d), axis=1)[:, :kk]
        sims.append(np.take_along_axis(d, order, 1))
        idx.append(np.take_along_axis(i, order, 1))
    s, i = torch.from_numpy(np.concatenate(sims)), torch.from_numpy(np.concatenate(idx))
    holes = ((i < 0) | torch.isinf(s)).any(1).nonzero().flatten()
    if len(holes):
        hs, hi = _exact_top_k(bank.cpu(), queries[holes].cpu(), kk, excl[holes], (1024, 65536))
        s[holes], i[holes] = hs, hi
    return s.to(bank.device), i.to(bank.device)


def top_k(bank: torch.Tensor, queries: torch.Tensor, k: int, exclude_self: Sequence[int] | torch.Tensor | None = None,
          approx: Approximate = Approximate(), blocks: tuple[int, int] = (1024, 65536)) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """Each query's ``k`` rows of ``bank`` with the largest inner product (rows used as given: l2-normalise them
    for cosine similarity): (sims, idx), both (Q, k'), largest first, where k' = min(k, rows available).
    ``exclude_self[q]`` is the row that query ``q`` itself is (never returned as its own neighbour) or -1. Exact
    (``blocks`` = queries × bank rows searched at a time, on the bank's device) unless ``approx`` says the search
    is too large (then a faiss IVF index on the CPU, see :class:`Approximate`)."""
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    n, q_total = len(bank), len(queries)
    excl = _excluded(exclude_self, q_total)
    kk = min(k, n - int(bool((excl >= 0).any())))
    if kk < 1:
        raise DataError(f"the collection has {n} image(s): no neighbour to return")
    if approx.exact(q_total, n):
        return _exact_top_k(bank, queries, kk, excl, blocks)
    return _approximate_top_k(bank, queries, kk, excl, (approx, blocks[0]))


@torch.inference_mode()
def nearest(features: torch.Tensor, query_features: torch.Tensor, k: int,
            exclude_self: Sequence[int] | torch.Tensor | None = None, chunk: int = 1024,
            bank_chunk: int = 65536, approx: Approximate = Approximate()) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` most cosine-similar rows of ``features``: (sims, idx), both (Q, k'), most similar first,
    where k' = min(k, rows available). ``exclude_self[q]`` is the row that query ``q`` itself is (never returned as
    its own neighbour) or -1. Queries are searched ``chunk`` at a time against ``bank_chunk`` rows at a time, exactly
    unless ``approx`` says the search is too large (see :class:`Approximate`)."""
    bank = F.normalize(features.float(), dim=1)
    queries = F.normalize(query_features.float(), dim=1)
    return top_k(bank, queries, k, exclude_self, approx, (chunk, bank_chunk))


@torch.inference_mode()
def _exact_pairs(f: torch.Tensor, threshold: float, chunk: int, max_pairs: int):
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
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return torch.cat(ii).numpy(), torch.cat(jj).numpy(), torch.cat(ss).numpy()


def _approximate_pairs(f: torch.Tensor, threshold: float, settings: tuple[Approximate, int], max_pairs: int):
    """Range search of every row (``chunk`` at a time) in an IVF index: a pair found from either side counts once;
    what faiss holds in memory is one chunk's hits, and the hits so far stay under twice ``max_pairs``."""
    approx, chunk = settings
    rows = _as_faiss(f)
    n = len(rows)
    index = ivf_index(rows, approx)
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))  # faiss keeps sims > radius
    keys, sims = [np.empty(0, np.int64)], [np.empty(0, np.float32)]
    found = 0
    for a in range(0, n, chunk):
        lims, d, i = index.range_search(rows[a:a + chunk], radius)
        q = np.repeat(np.arange(a, a + len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = (d >= np.float32(threshold)) & (i != q)
        found += int(keep.sum())
        if found > 2 * max_pairs:
            raise DataError(f"more than {max_pairs} pairs have cosine similarity ≥ {threshold}: raise the threshold")
        keys.append(np.minimum(q, i)[keep] * n + np.maximum(q, i)[keep])
        sims.append(d[keep])
    key, first = np.unique(np.concatenate(keys), return_index=True)
    if len(key) > max_pairs:
        raise DataError(f"more than {max_pairs} pairs have cosine similarity ≥ {threshold}: raise the threshold")
    return key // n, key % n, np.concatenate(sims)[first]


@torch.inference_mode()
def near_duplicates(features: torch.Tensor, threshold: float, chunk: int = 4096,
                    max_pairs: int = 1_000_000, approx: Approximate = Approximate()) -> list[tuple[int, int, float]]:
    """Every pair (i, j), i < j, whose cosine similarity is ≥ ``threshold``, as (i, j, similarity), most similar
    first (ties by i, then j). Exact: computed ``chunk`` × ``chunk`` block by block over the upper triangle; beyond
    ``approx.exact_up_to`` rows, a range search in a faiss IVF index (pairs in cells no probe reaches are missed).
    More than ``max_pairs`` pairs raises (the threshold is too low for the collection)."""
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold {threshold}: a cosine similarity in (0, 1]")
    if chunk < 1:
        raise ConfigError(f"chunk must be positive, got {chunk}")
    f = F.normalize(features.float(), dim=1)
    if approx.exact(len(f), len(f)):
        i, j, s = _exact_pairs(f, threshold, chunk, max_pairs)
    else:
        i, j, s = _approximate_pairs(f, threshold, (approx, chunk), max_pairs)
    order = np.lexsort((j, i, -s))
    return [(int(i[o]), int(j[o]), float(s[o])) for o in order]
