"""The second wave of losses (DCL/DCLW, SupCon, TiCo, W-MSE, MoCo v3, NNCLR) against hand computations on tiny
tensors and against each one's defining property."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import load_config
from selfsup.methods import build_method
from selfsup.methods.base import cosine_momentum
from selfsup.methods.dcl import dcl_loss, dclw_weights
from selfsup.methods.moco_v3 import moco_v3_ctr
from selfsup.methods.nnclr import NNCLR, nearest_support, nnclr_ctr
from selfsup.methods.simclr import nt_xent
from selfsup.methods.supcon import supcon_loss
from selfsup.methods.tico import tico_loss
from selfsup.methods.wmse import whiten, wmse_loss
from selfsup.models import build_backbone


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_dcl_drops_the_positive_from_the_denominator_by_hand():
    z1, z2 = _randn(0, 3, 4), _randn(1, 3, 4)
    tau = 0.3
    z = _unit(np.concatenate([z1.numpy(), z2.numpy()]))
    losses = []
    for i in range(6):
        j = (i + 3) % 6
        s = z @ z[i] / tau
        losses.append(-s[j] + math.log(sum(math.exp(s[k]) for k in range(6) if k not in (i, j))))
    assert float(dcl_loss(z1, z2, tau)) == pytest.approx(np.mean(losses), rel=1e-10)
    assert float(dcl_loss(z1, z2, tau)) < float(nt_xent(z1, z2, tau))  # NT-Xent's denominator also has the positive


def test_dclw_weights_by_hand_and_uniform_pairs_give_dcl():
    z1, z2 = _randn(2, 4, 5), _randn(3, 4, 5)
    s = (_unit(z1.numpy()) * _unit(z2.numpy())).sum(1)
    e = np.exp(s / 0.5)
    np.testing.assert_allclose(dclw_weights(z1, z2, 0.5).numpy(), 2 - 4 * e / e.sum(), rtol=1e-10)
    # every pair equally similar → w = 1 → DCLW = DCL
    a = F.normalize(_randn(4, 4, 6), dim=1)
    assert float(dcl_loss(a, a.clone(), 0.2, sigma=0.5)) == pytest.approx(float(dcl_loss(a, a.clone(), 0.2)), rel=1e-10)
    assert float(dcl_loss(z1, z2, 0.2, sigma=0.5)) != pytest.approx(float(dcl_loss(z1, z2, 0.2)), rel=1e-3)


def test_supcon_is_nt_xent_with_distinct_labels_and_matches_a_hand_loop():
    z1, z2 = _randn(5, 6, 4), _randn(6, 6, 4)
    assert float(supcon_loss(z1, z2, torch.arange(6), 0.1)) == pytest.approx(float(nt_xent(z1, z2, 0.1)), rel=1e-10)
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    z = _unit(np.concatenate([z1.numpy(), z2.numpy()]))
    yy = np.concatenate([y.numpy(), y.numpy()])
    losses = []
    for i in range(12):
        s = z @ z[i] / 0.1
        log_denom = math.log(sum(math.exp(s[a]) for a in range(12) if a != i))
        pos = [p for p in range(12) if p != i and yy[p] == yy[i]]
        losses.append(-np.mean([s[p] - log_denom for p in pos]))
    assert float(supcon_loss(z1, z2, y, 0.1)) == pytest.approx(np.mean(losses), rel=1e-10)


def test_tico_by_hand_and_the_running_covariance():
    z1, z2 = _randn(7, 5, 3), _randn(8, 5, 3)
    c0 = torch.eye(3, dtype=torch.float64) * 0.3
    loss, cov = tico_loss(z1, z2, c0, beta=0.9, rho=8.0)
    a, b = _unit(z1.numpy()), _unit(z2.numpy())
    c = 0.9 * c0.numpy() + 0.1 * a.T @ a / 5
    np.testing.assert_allclose(cov.numpy(), c, rtol=1e-10)
    expected = -(a * b).sum(1).mean() + 8.0 * np.mean([x @ c @ x for x in a])
    assert float(loss) == pytest.approx(expected, rel=1e-10)
    assert not cov.requires_grad


def test_whitened_batch_has_identity_covariance():
    z = _randn(9, 64, 8) @ _randn(10, 8, 8) + 3.0  # correlated, off-centre
    w = whiten(z)
    cov = torch.cov(w.T)
    torch.testing.assert_close(cov, torch.eye(8, dtype=torch.float64), atol=1e-8, rtol=0)
    # Cholesky whitening is lower-triangular: the first coordinate is just standardised
    first = (z[:, 0] - z[:, 0].mean()) / z[:, 0].std()
    torch.testing.assert_close(w[:, 0], first, atol=1e-10, rtol=0)


def test_wmse_is_zero_for_identical_views_and_positive_otherwise():
    z = _randn(11, 32, 4)
    g = torch.Generator().manual_seed(0)
    assert float(wmse_loss(z, z.clone(), 16, 2, g)) == pytest.approx(0.0, abs=1e-10)
    # a mean over sub-batches of 2 − 2cos between whitened rows
    z2 = _randn(12, 32, 4)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(3))
    expected = np.mean([float((2 - 2 * F.cosine_similarity(whiten(z[i]), whiten(z2[i]), dim=1)).mean())
                        for i in perm.view(-1, 16)])
    assert float(wmse_loss(z, z2, 16, 1, torch.Generator().manual_seed(3))) == pytest.approx(expected, rel=1e-10)


def test_moco_v3_ctr_by_hand_and_keys_get_no_gradient():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    k = torch.tensor([[3.0, 0.0], [1.0, 1.0]], requires_grad=True)
    tau = 0.5
    qs, ks = _unit(q.detach().numpy()), _unit(k.detach().numpy())
    logits = qs @ ks.T / tau
    ce = np.mean([-logits[i, i] + math.log(np.exp(logits[i]).sum()) for i in range(2)])
    loss = moco_v3_ctr(q, k, tau)
    assert float(loss.detach()) == pytest.approx(2 * tau * ce, rel=1e-6)
    loss.backward()
    assert k.grad is None and q.grad is not None


def test_nnclr_takes_the_nearest_support_vector_as_positive():
    support = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    z = torch.tensor([[0.9, 0.2], [-0.5, -0.1], [0.1, 3.0]])
    assert torch.equal(nearest_support(z, support), support[[0, 2, 1]])
    nn_z, p = support[[0, 1]].double(), torch.tensor([[2.0, 0.5], [0.3, 1.0]], dtype=torch.float64)
    logits = nn_z.numpy() @ _unit(p.numpy()).T / 0.1
    ce = np.mean([-logits[i, i] + math.log(np.exp(logits[i]).sum()) for i in range(2)])
    assert float(nnclr_ctr(nn_z, p, 0.1)) == pytest.approx(ce, rel=1e-6)


def test_nnclr_queue_is_fifo_and_used_once_filled():
    m = NNCLR(build_backbone("cnn", 1, widths=(4,)), NNCLR.Params(proj_hidden=8, proj_dim=4, pred_hidden=8,
                                                                 queue_size=6))
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    z = torch.randn(3, 4)
    assert torch.equal(m._support(z), F.normalize(z, dim=1))  # empty queue: a view is its own neighbour
    m._enqueue(a)
    assert int(m.queue_filled) == 4 and torch.equal(m._support(z), F.normalize(a, dim=1))
    m._enqueue(b)  # 8 entries into 6 slots: b[0:2] fill 4-5, b[2:4] overwrite the oldest (a[0:2])
    assert int(m.queue_filled) == 6 and int(m.queue_ptr) == 2
    torch.testing.assert_close(m.queue, F.normalize(torch.cat([b[2:4], a[2:4], b[0:2]]), dim=1))
    assert {"queue", "queue_ptr", "queue_filled"} <= set(m.state_dict())  # so a checkpoint carries them


def _embedding_method(name, z1, z2, **params):
    """A tiny ``name`` method whose loss is computed from the given embeddings (encode_joint replaced)."""
    cfg = load_config({"model": {"widths": [4, 8], "pool": 1},
                       "method": {"name": name, "proj_hidden": 16, "proj_dim": 8, **params}})
    m = build_method(cfg, 1).double()
    m.encode_joint = lambda views, head: [z1, z2]
    return m, [torch.zeros(len(z1), 1, 12, 12, dtype=torch.float64)] * 2


def test_dclw_weights_are_constants_unless_weight_grad():
    """DCLW's gradient is that of DCL's terms with each positive scaled by the constant w (lightly's detach); with
    weight_grad the gradient also flows through w, and differs."""
    z1 = _randn(11, 6, 5).requires_grad_(True)
    z2 = _randn(12, 6, 5).requires_grad_(True)
    tau, sigma = 0.2, 0.5
    m, views = _embedding_method("dclw", z1, z2, temperature=tau, sigma=sigma)
    got = torch.autograd.grad(m(views), (z1, z2))
    # by hand: w fixed from the current similarities, then −w·s_pos/τ + log Σ_negatives, mean over the 12 anchors
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    s = (a * b).sum(1).detach()
    w = 2 - 6 * torch.softmax(s / sigma, 0)
    z = torch.cat([a, b])
    sim = z @ z.T / tau
    pos = torch.cat([torch.arange(6, 12), torch.arange(6)])
    rows = torch.arange(12)
    mask = torch.eye(12, dtype=torch.bool)
    mask[rows, pos] = True
    ref = (torch.logsumexp(sim.masked_fill(mask, float("-inf")), 1) - w.repeat(2) * sim[rows, pos]).mean()
    want = torch.autograd.grad(ref, (z1, z2))
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)
    m_grad, _ = _embedding_method("dclw", z1, z2, temperature=tau, sigma=sigma, weight_grad=True)
    through = torch.autograd.grad(m_grad(views), (z1, z2))
    assert float(m_grad(views).detach()) == pytest.approx(float(m(views).detach()), rel=1e-12)  # same value
    assert (through[0] - got[0]).abs().max() > 1e-3  # another gradient


def _tiny(name, **params):
    cfg = load_config({"model": {"widths": [4, 8], "pool": 1},
                       "method": {"name": name, "proj_hidden": 16, "proj_dim": 8, **params}})
    torch.manual_seed(0)
    return build_method(cfg, 1).double()


def test_tico_second_view_comes_from_the_momentum_encoder_without_gradient():
    """lightly's TiCo benchmark: ẑ¹ online, ẑ² from an EMA copy of backbone + projector, no gradient to the second
    view; on_step moves the copy by the cosine-scheduled momentum."""
    m = _tiny("tico")
    g = torch.Generator().manual_seed(3)
    x1, x2 = (torch.rand(6, 1, 12, 12, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    loss = m([x1, x2])
    g1, g2 = torch.autograd.grad(loss, (x1, x2), allow_unused=True)
    assert g1.abs().sum() > 0 and (g2 is None or not g2.any())  # the second view gets no gradient
    assert all(not p.requires_grad for p in m.momentum_encoder.parameters())
    # the loss is tico_loss of the online first view and the momentum encoder's second view
    with torch.no_grad():
        for p in m.momentum_encoder.parameters():
            p.add_(0.01)  # a momentum encoder that differs from the online one
        m.cov.zero_()
        want, _ = tico_loss(m.projector(m.backbone(x1)), m.momentum_encoder(x2), m.cov, 0.9, 20.0)
        m.cov.zero_()
        assert float(m([x1, x2])) == pytest.approx(float(want), rel=1e-12)
        before = [p.clone() for p in m.momentum_encoder.parameters()]
        m.on_step(0.5)
        mom = cosine_momentum(m.params.base_momentum, 0.5)
        online = nn.Sequential(m.backbone, m.projector).parameters()
        for b, p, q in zip(before, m.momentum_encoder.parameters(), online):
            torch.testing.assert_close(p, mom * b + (1 - mom) * q, rtol=1e-12, atol=1e-14)


def _bn_batches(module):
    """Rows each BatchNorm of ``module`` normalises over, call by call: {name: [rows, ...]}."""
    seen = {}
    for name, mod in module.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, []).append(len(i[0])))
    return seen


def _two_views(n=6, seed=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 12, 12, generator=g, dtype=torch.float64) for _ in range(2)]


def test_moco_v3_runs_each_view_through_its_own_batchnorm_batch():
    """moco-v3's builder.py:86-87: the online encoder sees one view at a time, so every BatchNorm of the backbone,
    projector and predictor normalises over one view's n rows (twice a step), never over both views' 2n."""
    m = _tiny("moco_v3", pred_hidden=16)
    seen = _bn_batches(nn.ModuleDict({"backbone": m.backbone, "projector": m.projector,
                                            "predictor": m.predictor}))
    m(_two_views(n=6))
    assert seen and all(rows == [6, 6] for rows in seen.values()), seen


def test_moco_v3_heads_end_as_the_reference_builder():
    """builder.py:47-50, 105-122: the projector's last BatchNorm has no learned scale/shift; the predictor ends in
    such a BatchNorm on a ViT only. Other methods' heads keep their affine BatchNorms."""
    cnn = _tiny("moco_v3", pred_hidden=16)
    last = cnn.projector[-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine and last.weight is None
    assert isinstance(cnn.predictor[-1], nn.Linear)  # the CNN/ResNet predictor: no last BN (builder.py:109)
    cfg = load_config({"model": {"backbone": "vit", "vit_dim": 8, "vit_depth": 1, "vit_heads": 2},
                       "method": {"name": "moco_v3", "proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16}})
    vit = build_method(cfg, 1).double()
    assert isinstance(vit.predictor[-1], nn.BatchNorm1d) and not vit.predictor[-1].affine  # builder.py:122
    byol = _tiny("byol")
    assert all(b.affine for b in byol.modules() if isinstance(b, nn.BatchNorm1d))  # the default stays affine


def test_wmse_runs_the_backbone_per_view_and_the_projector_on_both():
    """htdt/self-supervised methods/w_mse.py:21-22: backbone BatchNorms see one view's n rows (twice), the projector's
    BatchNorm both views' 2n rows at once."""
    m = _tiny("wmse", proj_dim=4, w_size=8)
    backbone, projector = _bn_batches(m.backbone), _bn_batches(m.projector)
    m(_two_views(n=8))
    assert backbone and all(rows == [8, 8] for rows in backbone.values()), backbone
    assert projector and all(rows == [16] for rows in projector.values()), projector
