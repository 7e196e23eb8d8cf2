"""Similarity search (selfsup.evaluate.search): the exact path gives what the blocked torch search gave before faiss
came in (indices, similarities and order, ties included); the approximate path (faiss IVF, forced here with a small
``exact_up_to``) finds what exact search finds on clustered data, and its near-duplicate pairs are those above the
threshold."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.errors import DataError
from selfsup.evaluate.search import EXACT, Approximate, near_duplicates, nearest, top_k


def _reference_nearest(features, query_features, k, exclude_self=None, chunk=1024, bank_chunk=65536):
    """The search as it was before faiss (commit e172930), kept verbatim as the reference."""
    bank = F.normalize(features.float(), dim=1)
    queries = F.normalize(query_features.float(), dim=1)
    n, q_total = len(bank), len(queries)
    excl = torch.full((q_total,), -1, dtype=torch.long) if exclude_self is None else \
        torch.as_tensor(exclude_self, dtype=torch.long).reshape(-1)
    kk = min(k, n - int(bool((excl >= 0).any())))
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


def _reference_pairs(features, threshold, chunk=4096):
    f = F.normalize(features.float(), dim=1)
    n = len(f)
    ii, jj, ss = [], [], []
    for a in range(0, n, chunk):
        for b in range(a, n, chunk):
            s = f[a:a + chunk] @ f[b:b + chunk].T
            hit = s >= threshold
            if a == b:
                hit &= torch.ones_like(hit).triu(diagonal=1)
            i, j = hit.nonzero(as_tuple=True)
            ii.append(i + a)
            jj.append(j + b)
            ss.append(s[i, j])
    i, j, s = torch.cat(ii).numpy(), torch.cat(jj).numpy(), torch.cat(ss).numpy()
    order = np.lexsort((j, i, -s))
    return [(int(i[o]), int(j[o]), float(s[o])) for o in order]


def _with_ties(n=600, d=24, seed=0):
    """Random rows, every 7th one repeated (exact ties) and some scaled copies (ties after normalisation)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[1::7] = x[0:-1:7][: len(x[1::7])]
    x[5::11] = 3 * x[4::11][: len(x[5::11])]
    return x


def _clustered(n=3000, d=32, centres=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=g)
    return c[torch.randint(0, centres, (n,), generator=g)] + 0.35 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("blocks", [(1024, 65536), (64, 100)])
def test_exact_search_is_the_search_it_was(blocks):
    x = _with_ties()
    q_index = torch.arange(0, len(x), 3)
    for excl in (q_index, None):
        got = nearest(x, x[q_index], 9, exclude_self=excl, chunk=blocks[0], bank_chunk=blocks[1])
        ref = _reference_nearest(x, x[q_index], 9, excl, *blocks)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert near_duplicates(x, 0.9, chunk=blocks[1]) == _reference_pairs(x, 0.9, chunk=blocks[1])


def test_default_stays_exact_below_the_size_and_top_k_takes_rows_as_given():
    x = _with_ties()
    assert Approximate().exact(len(x), len(x)) and not Approximate(exact_up_to=100).exact(len(x), 101)
    bank = F.normalize(torch.randn(600, 24, generator=torch.Generator().manual_seed(2)), dim=1)  # no ties
    s, i = top_k(bank, bank[:50], 5)
    ref_s, ref_i = (bank[:50] @ bank.T).topk(5, dim=1)
    assert torch.equal(s, ref_s) and torch.equal(i, ref_i)
    s2, _ = top_k(2 * bank, bank[:50], 5)  # inner products, not cosine
    assert torch.allclose(s2, 2 * ref_s)


def test_approximate_search_recalls_the_exact_neighbours():
    x = _clustered()
    forced = Approximate(exact_up_to=500)
    q = torch.arange(0, len(x), 5)
    s, i = nearest(x, x[q], 10, exclude_self=q, approx=forced)
    es, ei = nearest(x, x[q], 10, exclude_self=q, approx=EXACT)
    assert s.shape == es.shape == (len(q), 10)
    assert not (i == q[:, None]).any(), "a query is never its own neighbour"
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i.tolist(), ei.tolist())])
    assert recall >= 0.9, recall
    assert (s[:, :-1] >= s[:, 1:]).all(), "most similar first"
    found = (i.sort(1).values == ei.sort(1).values).all(1)  # rows that found the exact set: its sims, to rounding
    assert found.float().mean() > 0.5
    assert torch.allclose(s[found], es[found], atol=1e-5)


def test_approximate_search_fills_every_row_even_from_a_single_probe():
    x = _clustered(n=1200)
    s, i = nearest(x, x[:40], 25, exclude_self=torch.arange(40), approx=Approximate(exact_up_to=10, nlist=60, nprobe=1))
    assert (i >= 0).all() and torch.isfinite(s).all() and i.shape == (40, 25)
    assert not (i == torch.arange(40)[:, None]).any()


def test_approximate_near_duplicates_are_pairs_above_the_threshold():
    x = _clustered(n=2000)
    g = torch.Generator().manual_seed(1)
    x[1000:1100] = x[:100] + 0.01 * torch.randn(100, x.shape[1], generator=g)  # planted near-duplicates
    exact = near_duplicates(x, 0.98)
    approx = near_duplicates(x, 0.98, chunk=300, approx=Approximate(exact_up_to=500))
    assert len(exact) >= 100
    pairs = {(i, j) for i, j, _ in approx}
    assert len(pairs) == len(approx) and all(i < j for i, j in pairs)
    assert len(pairs & {(i, j) for i, j, _ in exact}) >= 0.95 * len(exact)
    assert all(s >= 0.98 for _, _, s in approx)
    assert [s for _, _, s in approx] == sorted((s for _, _, s in approx), reverse=True)
    with pytest.raises(DataError, match="raise the threshold"):
        near_duplicates(x, 0.98, max_pairs=10, approx=Approximate(exact_up_to=500))
