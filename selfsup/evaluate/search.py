"""Cosine-similarity search over l2-normalised features: each query's nearest rows, and near-duplicate pairs.

Both searches are exact and run block by block (queries × a block of the collection, then a running top-k; or one
block of pairs at a time), so memory stays bounded by the block sizes: the N×N similarity matrix is never built."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError


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
