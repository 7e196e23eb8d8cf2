"""Issue 36: the evaluation's speed-ups keep its numbers. The kNN grid over k × T comes from one top-k pass and
equals a search per temperature; the raw-pixel baselines are cached under a fingerprint of the data's content and
the protocol, invalidated when either changes."""
import numpy as np
import torch
import torch.nn.functional as F

from selfsup.config import load_config
from selfsup.data import ImageDataset
from selfsup.evaluate import baselines, probes, search
from selfsup.evaluate.probes import knn_grid_votes, select_knn


def _reference_votes(bank, bank_y, q, k, t, classes):
    """The weighted kNN of one (k, T), searched on its own (the code before the grid shared one pass)."""
    sim, idx = (F.normalize(q, dim=1) @ F.normalize(bank, dim=1).T).topk(k, dim=1)
    votes = torch.zeros(len(q), classes).scatter_add_(1, bank_y[idx], ((sim - 1) / t).exp())
    return votes.argmax(1)


def test_knn_grid_from_one_pass_equals_a_search_per_k_and_temperature():
    g = torch.Generator().manual_seed(0)
    bank_y, q_y = torch.randint(0, 4, (300,), generator=g), torch.randint(0, 4, (120,), generator=g)
    centres = torch.randn(4, 16, generator=g)
    bank = centres[bank_y] + 1.5 * torch.randn(300, 16, generator=g)
    q = centres[q_y] + 1.5 * torch.randn(120, 16, generator=g)
    ks, ts = [1, 5, 20, 50], [0.5, 0.1, 0.02]
    got = knn_grid_votes(bank, bank_y, q, ks, ts, chunk=50)  # chunks of queries: the pass is split too
    assert set(got) == {(k, t) for k in ks for t in ts}
    for (k, t), pred in got.items():
        assert torch.equal(pred, _reference_votes(bank, bank_y, q, k, t, 4)), (k, t)
    k, t, scores = select_knn(bank, bank_y, q, q_y, ks, ts)
    assert scores == {kt: float((p == q_y).float().mean()) for kt, p in got.items()}
    assert scores[(k, t)] == max(scores.values())


def test_knn_beyond_the_exact_size_searches_a_faiss_index_and_agrees_with_exact(monkeypatch):
    """A bank past the exact search's size (here forced small) is searched by the faiss IVF index of
    selfsup.evaluate.search, the neighbour search of a million-image kNN; on clustered features its votes agree with
    the exact ones."""
    g = torch.Generator().manual_seed(1)
    bank_y, q_y = torch.randint(0, 5, (4000,), generator=g), torch.randint(0, 5, (400,), generator=g)
    centres = 3 * torch.randn(5, 32, generator=g)
    bank = centres[bank_y] + torch.randn(4000, 32, generator=g)
    q = centres[q_y] + torch.randn(400, 32, generator=g)
    exact = knn_grid_votes(bank, bank_y, q, [10], [0.1])[(10, 0.1)]
    calls = []

    def forced_ivf(b, queries, k, exclude_self=None, approx=search.Approximate(), blocks=(1024, 65536)):
        calls.append(len(b))
        return search.top_k(b, queries, k, exclude_self, search.Approximate(exact_up_to=100), blocks)

    monkeypatch.setattr(probes, "top_k", forced_ivf)
    monkeypatch.setattr(search, "_exact_top_k", None)  # the exact path would fail: the index must answer
    approx = knn_grid_votes(bank, bank_y, q, [10], [0.1])[(10, 0.1)]
    assert calls == [4000]
    assert (approx == exact).float().mean() >= 0.98
    assert (approx == q_y).float().mean() >= 0.9


def _datasets(seed=0):
    rng = np.random.default_rng(seed)
    def ds(n):
        return ImageDataset(torch.from_numpy(rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)),
                            torch.from_numpy(rng.integers(0, 3, n)), ["a", "b", "c"])
    return ds(90), ds(30)


def _eval(**keys):
    e = {"knn_k_grid": [3], "linear_max_iter": 5, "label_fractions": [], "fewshot_episodes": 4, **keys}
    return load_config({"eval": e}).eval


def test_baseline_fingerprint_covers_the_data_content_and_the_protocol(monkeypatch):
    train, test = _datasets()
    parts = (np.arange(0, 80), np.arange(80, 90))
    key = baselines.baseline_fingerprint(train, test, parts, _eval(), 0, 0.1)
    assert key == baselines.baseline_fingerprint(*_datasets(), parts, _eval(), 0, 0.1)  # same content, other tensors
    pixel = train.images.clone()
    pixel[7, 0, 3, 3] ^= 1
    label = test.labels.clone()
    label[0] = (label[0] + 1) % 3
    changed = {
        "one pixel": (ImageDataset(pixel, train.labels, train.classes), test, parts, _eval(), 0, 0.1),
        "one test label": (train, ImageDataset(test.images, label, test.classes), parts, _eval(), 0, 0.1),
        "same bytes, other shape": (ImageDataset(train.images.reshape(90, 1, 4, 16), train.labels, train.classes),
                                    test, parts, _eval(), 0, 0.1),
        "the split": (train, test, (np.arange(1, 81), np.r_[0, np.arange(81, 90)]), _eval(), 0, 0.1),
        "an eval key": (train, test, parts, _eval(knn_k_grid=[5]), 0, 0.1),
        "few-shot ways": (train, test, parts, _eval(fewshot_ways=3), 0, 0.1),
        "the seed": (train, test, parts, _eval(), 1, 0.1),
    }
    for name, args in changed.items():
        assert baselines.baseline_fingerprint(*args) != key, name
    monkeypatch.setattr(baselines, "_BASELINE_PROTOCOL", baselines._BASELINE_PROTOCOL + 1)  # their code changed
    assert baselines.baseline_fingerprint(train, test, parts, _eval(), 0, 0.1) != key


def test_raw_baselines_are_computed_once_per_data_and_protocol(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    train, test = _datasets()
    tr, va = np.arange(0, 80), np.arange(80, 90)
    calls = []
    real = baselines.probe_all
    monkeypatch.setattr(baselines, "probe_all", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = baselines.raw_baselines(train, test, tr, va, _eval(), 0, 0.1)
    again = baselines.raw_baselines(train, test, tr, va, _eval(), 0, 0.1)
    assert len(calls) == 1 and "cached" not in first and again.pop("cached") is True
    assert again == first  # the numbers of the first computation, read back
    assert len(list(baselines.baseline_cache().glob("*.json"))) == 1
    pixel = train.images.clone()
    pixel[0, 0, 0, 0] ^= 1
    other = baselines.raw_baselines(ImageDataset(pixel, train.labels, train.classes), test, tr, va, _eval(), 0, 0.1)
    assert "cached" not in other and len(calls) == 2  # the data changed: computed again
    baselines.raw_baselines(train, test, tr, va, _eval(linear_l2_grid=[1e-2]), 0, 0.1)
    assert len(calls) == 3  # the protocol changed: computed again
