"""DINO: the loss and the centre against hand computations on tiny float64 tensors, its defining property (centring
keeps a collapsed teacher from going one-hot), the stop-gradient through the teacher, the prototypes' weight norm,
the schedules of on_step and the running state in the state dict."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.methods.base import cosine_momentum
from selfsup.methods.dino import DINO, DINOHead, dino_loss, teacher_probs, updated_center
from selfsup.models import build_backbone


def _randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-300).log()).sum(1)


def _model(**params):
    torch.manual_seed(0)
    p = DINO.Params(proj_hidden=16, proj_dim=8, out_dim=12, **params)
    return DINO(build_backbone("cnn", 1, widths=(4, 8)), p).double()


def _views(seed=1, n=6):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 12, 12, generator=g, dtype=torch.float64) for _ in range(2)]


def test_dino_loss_and_centre_by_hand():
    s1, s2, t1, t2 = (_randn(i, 3, 5) for i in range(4))
    c = _randn(4, 5) * 0.3
    ts, tt = 0.1, 0.04
    loss = float(dino_loss(s1, s2, t1, t2, c, ts, tt))
    s = [s1.numpy(), s2.numpy()]
    t = [t1.numpy(), t2.numpy()]
    terms = []
    for a, b in ((0, 1), (1, 0)):  # the teacher of one view, the student of the other
        for i in range(3):
            pt = _softmax((t[a][i] - c.numpy()) / tt)
            log_ps = np.log(_softmax(s[b][i] / ts))
            terms.append(-sum(pt[k] * log_ps[k] for k in range(5)))
    assert loss == pytest.approx(np.mean(terms), rel=1e-10)
    # the same view of teacher and student is not a pair: swapping the students changes the loss
    assert float(dino_loss(s2, s1, t1, t2, c, ts, tt)) != pytest.approx(loss, rel=1e-3)
    new_c = updated_center(c, torch.cat([t1, t2]), 0.9)
    np.testing.assert_allclose(new_c.numpy(), 0.9 * c.numpy() + 0.1 * np.concatenate(t).mean(0), rtol=1e-12)


def test_centring_keeps_a_collapsed_teacher_from_going_one_hot():
    """Every sample gives the same logits (a collapsed network). Without the centre the sharpened teacher is one-hot
    (entropy ~0); with c following the batch mean, (t − c) → 0 and the teacher is nearly uniform (entropy → log K)."""
    k = 16
    logits = torch.zeros(8, k, dtype=torch.float64)
    logits[:, 3] = 2.0  # one prototype dominates every sample
    logits[:, 7] = 1.0
    c = torch.zeros(k, dtype=torch.float64)
    for _ in range(60):
        p = teacher_probs(logits, c, 0.04)
        c = updated_center(c, logits, 0.9)
    centred = _entropy(teacher_probs(logits, c, 0.04))
    plain = _entropy(teacher_probs(logits, torch.zeros(k, dtype=torch.float64), 0.04))
    assert float(centred.min()) > 0.99 * math.log(k)
    assert float(plain.max()) < 1e-6
    assert float(_entropy(p).min()) > 0.99 * math.log(k)


class _SameFeatures(torch.nn.Module):
    """A collapsed encoder: every image gets the same features."""
    feat_dim = 4

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64))

    def forward(self, x):
        return self.features.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


def test_the_module_centres_its_teacher_on_a_collapsed_encoder():
    """The same through DINO.forward: after a few training forwards the centre is the teacher's logits and its
    output is nearly uniform, though it started sharp."""
    torch.manual_seed(0)
    m = DINO(_SameFeatures(), DINO.Params(proj_hidden=16, proj_dim=8, out_dim=12, head_bn=False)).double()
    x1, x2 = _views()
    with torch.no_grad():
        t = m.teacher(torch.cat([x1, x2]))
        assert torch.allclose(t, t[:1].expand_as(t))  # collapsed: the same logits for every image
        first = _entropy(teacher_probs(t, m.center, m.teacher_temp))
        for i in range(60):
            m([x1, x2])
            if i == 0:  # c ← 0.9·0 + 0.1·mean of the teacher's logits of both views
                torch.testing.assert_close(m.center, 0.1 * t.mean(0))
        after = _entropy(teacher_probs(t, m.center, m.teacher_temp))
    assert float(first.max()) < 0.25 * math.log(12)
    assert float(after.min()) > 0.99 * math.log(12)


def test_gradient_reaches_the_student_only_and_matches_the_softmax_difference():
    s1, s2 = _randn(10, 4, 6).requires_grad_(), _randn(11, 4, 6).requires_grad_()
    t1, t2 = _randn(12, 4, 6).requires_grad_(), _randn(13, 4, 6).requires_grad_()
    c = _randn(14, 6)
    dino_loss(s1, s2, t1, t2, c, 0.1, 0.05).backward()
    assert t1.grad is None and t2.grad is None  # stop-gradient through the teacher
    # ∂/∂s² of ½·mean_i H(P_t(t¹_i), P_s(s²_i)) = ½ (softmax(s²/τ_s) − P_t(t¹)) / (τ_s · n)
    p1 = F.softmax((t1.detach() - c) / 0.05, dim=1)
    p2 = F.softmax((t2.detach() - c) / 0.05, dim=1)
    torch.testing.assert_close(s2.grad, 0.5 * (F.softmax(s2.detach() / 0.1, dim=1) - p1) / (0.1 * 4))
    torch.testing.assert_close(s1.grad, 0.5 * (F.softmax(s1.detach() / 0.1, dim=1) - p2) / (0.1 * 4))

    m = _model(freeze_last_layer_fraction=0.0)  # the prototypes not frozen at step 0
    m(_views()).backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.head.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())


def test_prototypes_are_weight_normalised():
    head = DINOHead(5, 7, 4, 9, layers=3, batch_norm=False).double()
    x = _randn(15, 3, 5)
    z = F.normalize(head.mlp(x), dim=1)
    w = head.prototypes.weight.detach()
    torch.testing.assert_close(head(x), z @ (w / w.norm(dim=1, keepdim=True)).T)
    with torch.no_grad():
        before = head(x)
        head.prototypes.weight.mul_(torch.arange(1, 10, dtype=torch.float64)[:, None])  # rescale every prototype
        torch.testing.assert_close(head(x), before)
    assert float(before.abs().max()) <= 1 + 1e-12  # cosines: logits/τ_s stay bounded
    learned = DINOHead(5, 7, 4, 9, norm_last_layer=False)
    assert {n for n, _ in learned.prototypes.named_parameters()} == {"weight", "norm"}
    assert {n for n, _ in head.prototypes.named_parameters()} == {"weight"}


def test_on_step_schedules_and_the_state_dict_carries_teacher_centre_and_temperature():
    m = _model(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_fraction=0.3, base_momentum=0.9)
    assert float(m.teacher_temp) == pytest.approx(0.04)
    for prog, temp in ((0.15, 0.055), (0.3, 0.07), (1.0, 0.07)):
        m.on_step(prog)
        assert float(m.teacher_temp) == pytest.approx(temp, rel=1e-12), prog
    # teacher EMA with the cosine momentum: θ_t ← m·θ_t + (1 − m)·θ_s
    with torch.no_grad():
        for p in m.head.parameters():
            p.add_(1.0)
    t_before = [p.clone() for p in m.teacher.parameters()]
    mom = cosine_momentum(0.9, 0.5)
    m.on_step(0.5)
    for tb, ta, s in zip(t_before, m.teacher.parameters(), torch.nn.Sequential(m.backbone, m.head).parameters()):
        torch.testing.assert_close(ta, mom * tb + (1 - mom) * s)

    x = _views()
    m(x)  # moves the centre
    keys = m.state_dict().keys()
    assert {"center", "teacher_temp"} <= keys and any(k.startswith("teacher.") for k in keys)
    fresh = _model()
    m.eval(), fresh.eval()
    with torch.no_grad():
        assert float(fresh(x)) != pytest.approx(float(m(x)), rel=1e-6)
        fresh.load_state_dict(m.state_dict())
        assert float(fresh.teacher_temp) == pytest.approx(0.07)
        torch.testing.assert_close(fresh.center, m.center)
        assert float(fresh(x)) == pytest.approx(float(m(x)), rel=1e-12)


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_the_last_layer_is_frozen_for_the_first_share_of_training(norm_last_layer):
    """DINO's --freeze_last_layer (utils.py:144-149): over the first ``freeze_last_layer_fraction`` of the steps the
    prototypes (and their learned norm) get a zero gradient and keep their weights under the optimiser; then they
    train. The rest of the student trains from the first step; the switch is in the state dict."""
    m = _model(freeze_last_layer_fraction=0.5, norm_last_layer=norm_last_layer)
    last = list(m.head.prototypes.parameters())
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    total = 4
    for step in range(total):
        before = [p.detach().clone() for p in last]
        mlp_before = m.head.mlp[0].weight.detach().clone()
        opt.zero_grad(set_to_none=True)
        m(_views(seed=step)).backward()
        frozen = step < 2  # progress step/total < 0.5
        assert all(bool((p.grad.abs().sum() == 0) == frozen) for p in last), step
        opt.step()
        m.on_step((step + 1) / total)
        assert all(torch.equal(b, p) == frozen for b, p in zip(before, last)), step
        assert not torch.equal(mlp_before, m.head.mlp[0].weight)
    assert "last_layer_frozen" in m.state_dict() and int(m.last_layer_frozen) == 0
    fresh = _model(freeze_last_layer_fraction=0.5, norm_last_layer=norm_last_layer)
    assert int(fresh.last_layer_frozen) == 1
    fresh.load_state_dict(m.state_dict())
    assert int(fresh.last_layer_frozen) == 0  # a resumed run continues unfrozen
