import math

import pytest
import torch

from selfsup.evaluate import alignment, collapse_std, linear_cka, linear_probe, rankme, uniformity
from selfsup.evaluate.probes import knn_predict, select_knn_k


def _clusters(n=60, d=5, seed=0, spread=0.1):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(3, d) * 3
    y = torch.arange(n) % 3
    return centers[y] + spread * torch.randn(n, d, generator=g), y


def test_knn_on_separable_clusters_and_weighting():
    x, y = _clusters()
    q, qy = _clusters(seed=1)
    assert torch.equal(knn_predict(x, y, q, k=5), qy)
    # a single near neighbour of class 1 outweighs two far ones of class 0 at low temperature
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.05]])
    assert int(knn_predict(bank, labels, query, k=3, temperature=0.05)) == 1
    assert int(knn_predict(bank, labels, query, k=3, temperature=100.0)) == 0  # ~uniform votes: majority


def test_select_k_uses_validation_only():
    x, y = _clusters(spread=1.5)
    v, vy = _clusters(seed=2, spread=1.5)
    k, scores = select_knn_k(x, y, v, vy, [1, 5, 15], 0.1)
    assert k in scores and scores[k] == max(scores.values())


def test_linear_probe_separable_and_l2_choice():
    x, y = _clusters(n=90)
    v, vy = _clusters(n=30, seed=1)
    t, ty = _clusters(n=30, seed=2)
    r = linear_probe(x, y, v, vy, t, ty, l2_grid=(0.0, 1e-2), max_iter=50)
    assert r["test_acc"] == 1.0 and r["l2"] in (0.0, 1e-2)


def test_rankme_extremes():
    rank1 = torch.randn(100, 1) @ torch.randn(1, 16)
    assert rankme(rank1) == pytest.approx(1.0, abs=1e-3)
    iso = torch.linalg.qr(torch.randn(64, 16))[0] * 5  # 16 equal singular values
    assert rankme(iso) == pytest.approx(16.0, rel=1e-3)


def test_alignment_uniformity_collapse():
    z = torch.randn(200, 8)
    assert alignment(z, 2 * z) == pytest.approx(0.0, abs=1e-12)
    assert alignment(z, -z) == pytest.approx(4.0)
    collapsed = torch.ones(50, 8)
    assert uniformity(collapsed) == pytest.approx(0.0, abs=1e-12)  # log E exp(0) = 0, the worst value
    assert uniformity(z) < -1.0
    assert collapse_std(collapsed) == pytest.approx(0.0, abs=1e-12)
    assert collapse_std(torch.randn(5000, 16)) == pytest.approx(1 / math.sqrt(16), rel=0.05)


def test_cka_invariances():
    x = torch.randn(100, 6)
    q = torch.linalg.qr(torch.randn(6, 6))[0]
    assert linear_cka(x, 3 * x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.randn(100, 6)) < 0.5
