"""SwAV: Sinkhorn-Knopp codes and the swapped-prediction loss against hand computations (float64), the codes'
defining property (every sample's code sums to 1, every prototype gets B/K of the batch), the stop-gradient through
the codes, frozen prototypes, and the running state (progress, queue) in the state dict."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.methods.swav import SwAV, sinkhorn, swapped_prediction
from selfsup.models import build_backbone
from selfsup.train.optim import build_optimizer
from .helpers import _sinkhorn_by_hand


def _randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)




def _swav(queue_size=0, freeze=0.0, k=5):
    torch.manual_seed(0)
    m = SwAV(build_backbone("cnn", 1, widths=(4,)), SwAV.Params(proj_hidden=8, proj_dim=4, num_prototypes=k,
                                                                  queue_size=queue_size,
                                                                  freeze_prototypes_fraction=freeze)).double()
    return m


def _views(seed, n=6):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]


def test_sinkhorn_matches_a_hand_loop():
    s = _randn(0, 5, 3)
    for eps, it in [(0.5, 1), (0.5, 3), (0.05, 3)]:
        np.testing.assert_allclose(sinkhorn(s, eps, it).numpy(), _sinkhorn_by_hand(s.tolist(), eps, it), rtol=1e-10)


def test_codes_rows_sum_to_one_and_every_prototype_gets_b_over_k():
    b, k = 12, 4
    s = F.normalize(_randn(1, b, 6), dim=1) @ F.normalize(_randn(2, k, 6), dim=1).T
    s[:, 0] += 2.0  # every sample prefers prototype 0: the trivial (collapsed) assignment
    assert (s.argmax(1) == 0).all()
    errors = []
    for it in (1, 3, 10, 1000):
        q = sinkhorn(s, 0.05, it)
        torch.testing.assert_close(q.sum(1), torch.ones(b, dtype=torch.float64), rtol=0, atol=1e-12)
        assert (q >= 0).all()
        errors.append(float((q.sum(0) - b / k).abs().max()))
    assert errors[-1] < 1e-9  # converged: equal mass b/k = 3 per prototype
    assert errors[0] > errors[1] > errors[2] > errors[3], errors  # each round moves towards it
    assert (sinkhorn(s, 0.05, 1000).argmax(1) != 0).sum() >= b // 2  # equipartition spreads the samples
    # B = K: as ε → 0 the codes approach the one-to-one assignment of largest total score (by hand over the 6
    # permutations: 0→0, 1→1, 2→2 scores 1.9, the next best 1.3), though every row's argmax is prototype 0
    s = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.6, 0.0, 0.3]], dtype=torch.float64)
    torch.testing.assert_close(sinkhorn(s, 0.01, 1000), torch.eye(3, dtype=torch.float64), atol=1e-3, rtol=0)


def test_swapped_prediction_by_hand():
    s1, s2 = _randn(3, 4, 3), _randn(4, 4, 3)
    q1, q2 = sinkhorn(_randn(5, 4, 3), 0.5, 3), sinkhorn(_randn(6, 4, 3), 0.5, 3)
    total = 0.0
    for i in range(4):
        for s, q in ((s1, q2), (s2, q1)):
            log_z = math.log(sum(math.exp(float(x)) for x in s[i]))
            total -= sum(float(q[i, k]) * (float(s[i, k]) - log_z) for k in range(3))
    assert float(swapped_prediction(s1, s2, q1, q2)) == pytest.approx(total / 8, rel=1e-10)


def test_forward_by_hand_from_the_projections():
    m = _swav(k=5)
    m.on_step(0.5)  # past the (zero) freeze; prototypes normalised
    views = _views(7)
    loss = float(m(views).detach())
    with torch.no_grad():
        z1, z2 = (F.normalize(z, dim=1).numpy() for z in m.encode_joint(views, m.projector))
    c = m.prototypes.weight.detach().numpy()
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-12)
    c1, c2 = z1 @ c.T, z2 @ c.T
    q1, q2 = _sinkhorn_by_hand(c1.tolist(), 0.05, 3), _sinkhorn_by_hand(c2.tolist(), 0.05, 3)

    def ce(q, s):
        s = s / 0.1
        return -(q * (s - np.log(np.exp(s).sum(1, keepdims=True)))).sum(1).mean()

    assert loss == pytest.approx(0.5 * (ce(q2, c1) + ce(q1, c2)), rel=1e-9)


def test_no_gradient_through_the_codes():
    """d loss / d cos1 = (softmax(cos1/τ) − q2) / (2Bτ): the codes are constants (a gradient through Sinkhorn
    would add terms)."""
    cos1 = torch.tanh(_randn(8, 6, 4)).requires_grad_()
    cos2 = torch.tanh(_randn(9, 6, 4)).requires_grad_()
    q1, q2 = sinkhorn(cos1, 0.05, 3), sinkhorn(cos2, 0.05, 3)
    assert not q1.requires_grad
    swapped_prediction(cos1 / 0.1, cos2 / 0.1, q1, q2).backward()
    torch.testing.assert_close(cos1.grad, (F.softmax(cos1.detach() / 0.1, 1) - q2) / (2 * 6 * 0.1))
    torch.testing.assert_close(cos2.grad, (F.softmax(cos2.detach() / 0.1, 1) - q1) / (2 * 6 * 0.1))


def test_prototypes_frozen_at_first_then_trained_and_renormalised():
    torch.set_num_threads(1)
    m = _swav(freeze=0.3)
    opt = build_optimizer(m, "adamw", lr=0.05, momentum=0.9, weight_decay=0.5)
    m.on_step(0.0)  # normalised in float64
    before = m.prototypes.weight.detach().clone()
    m(_views(10)).backward()
    g = m.prototypes.weight.grad
    assert g is not None and float(g.abs().max()) == 0.0  # in the graph (DDP static graph), zero gradient
    assert float(m.backbone.parameters().__next__().grad.abs().max()) > 0
    opt.step()
    m.on_step(0.2)  # weight decay shrank the prototypes; re-normalising restores them exactly
    torch.testing.assert_close(m.prototypes.weight.detach(), before, rtol=0, atol=1e-12)
    assert float(m.progress) == 0.2
    opt.zero_grad()
    m.on_step(0.3)  # the freeze is over
    m(_views(11)).backward()
    assert float(m.prototypes.weight.grad.abs().max()) > 1e-6
    opt.step()
    m.on_step(0.31)
    w = m.prototypes.weight.detach()
    assert float((w - before).abs().max()) > 1e-3
    torch.testing.assert_close(w.norm(dim=1), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-12)


def test_queue_fills_then_joins_sinkhorn_and_rides_in_the_state_dict():
    m = _swav(queue_size=12)
    m.on_step(0.5)
    assert not m.pure_forward and _swav().pure_forward
    views = _views(12)
    with torch.no_grad():
        z1, z2 = (F.normalize(z, dim=1) for z in m.encode_joint(views, m.projector))
        m(views)  # 6 of 12 rows: not used yet
        torch.testing.assert_close(m.queue[0, :6], z1)
        torch.testing.assert_close(m.queue[1, :6], z2)
        assert int(m.queue_count) == 6
        m(_views(13))
        torch.testing.assert_close(m.queue[0, 6:], z1)  # the newest first, older ones shifted back
    state = m.state_dict()
    assert {"progress", "queue", "queue_count"} <= state.keys()
    restored = _swav(queue_size=12)
    restored.load_state_dict(state)
    assert float(restored.progress) == 0.5
    m.eval(), restored.eval()
    views = _views(14)
    full = float(m(views).detach())
    assert float(restored(views).detach()) == pytest.approx(full, rel=1e-12)
    # the full queue changes the codes: the same model without it gives another loss
    restored.queue_count.zero_()
    assert float(restored(views).detach()) != pytest.approx(full, rel=1e-6)
