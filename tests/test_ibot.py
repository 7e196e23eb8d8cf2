"""iBOT and KoLeo: the patch loss and KoLeo against lightly's IBOTPatchLoss / KoLeoLoss and the iBOT / DINOv2 code,
recomputed by hand in numpy on float64 tensors; the whole iBOT loss rebuilt from the module's parts; the defining
property (the student never sees a masked patch, only masked tokens are scored); the blockwise masks; the patch
centre; KoLeo spreading the batch; the config checks; and an exact resume from the state dict + mask generator."""
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.methods import build_method
from selfsup.methods import ibot as ibot_mod
from selfsup.methods.dino import dino_loss
from selfsup.methods.ibot import block_mask, ibot_patch_loss, koleo_loss

TINY = {"backbone": "vit", "vit_dim": 16, "vit_depth": 1, "vit_heads": 2}


def _randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _ibot(seed=0, **params):
    p = {"name": "ibot", "proj_hidden": 16, "proj_dim": 8, "out_dim": 12, **params}
    torch.manual_seed(seed)
    return build_method(load_config({"model": TINY, "method": p}), 1).double()


def _views(seed=1, n=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 28, 28, generator=g, dtype=torch.float64) for _ in range(2)]


def test_patch_loss_matches_lightly_and_the_ibot_reference_by_hand():
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)  # image 1: nothing masked
    s, t, c = _randn(0, 4, 5), _randn(1, 4, 5), _randn(2, 5) * 0.3  # the 4 masked tokens, row-major
    loss = float(ibot_patch_loss(s, t, mask, c, 0.1, 0.04))
    # lightly ibot_loss.py:88-104: per-token H, weight 1/#masked of its image, sum / B (mask as (B, H, W))
    pt, log_ps = _softmax((t.numpy() - c.numpy()) / 0.04), np.log(_softmax(s.numpy() / 0.1))
    h = -(pt * log_ps).sum(-1)
    m3 = mask.numpy().reshape(3, 2, 2)
    weight = np.broadcast_to(1 / np.maximum(m3.sum((1, 2), keepdims=True), 1), m3.shape)[m3]
    assert loss == pytest.approx((h * weight).sum() / 3, rel=1e-12)
    # bytedance/ibot main_ibot.py:543-546 on full (B, L, K) tensors: per image mean over masked, then mean
    full_s, full_t = np.zeros((3, 4, 5)), np.zeros((3, 4, 5))
    full_s[mask.numpy()], full_t[mask.numpy()] = s.numpy(), t.numpy()
    per_token = -(_softmax((full_t - c.numpy()) / 0.04) * np.log(_softmax(full_s / 0.1))).sum(-1)
    per_image = [(per_token[i] * mask[i].numpy()).sum() / max(mask[i].sum().item(), 1) for i in range(3)]
    assert loss == pytest.approx(np.mean(per_image), rel=1e-12)
    assert loss == pytest.approx((h[:3].mean() + h[3]) / 3, rel=1e-12)  # images weigh the same, not tokens
    assert float(ibot_patch_loss(s[:0], t[:0], torch.zeros(3, 4, dtype=torch.bool), c, 0.1, 0.04)) == 0.0


def _koleo_numpy(x, eps=1e-8):
    """lightly koleo_loss.py:52-64 / dinov2 koleo_loss.py:38-47: nearest neighbour by the largest dot product,
    PairwiseDistance(p=2, eps) = ‖a − b + eps‖."""
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
    d = x @ x.T
    np.fill_diagonal(d, -2)
    nn = d.argmax(1)
    return -np.log(np.linalg.norm(x - x[nn] + eps, axis=1) + eps).mean()


def test_koleo_by_hand_and_against_the_nearest_euclidean_neighbour():
    x = _randn(3, 7, 4) * 3
    assert float(koleo_loss(x)) == pytest.approx(_koleo_numpy(x.numpy()), rel=1e-12)
    u = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    nearest = [min(np.linalg.norm(u[i] - u[j]) for j in range(7) if j != i) for i in range(7)]
    assert float(koleo_loss(x)) == pytest.approx(-np.mean(np.log(nearest)), rel=1e-6)
    assert float(koleo_loss(x * 5.0)) == pytest.approx(float(koleo_loss(x)), rel=1e-12)  # scale-free


def test_koleo_spreads_a_clustered_batch():
    """The defining property: minimising KoLeo pushes nearest neighbours apart (the batch spreads over the sphere);
    evenly spread points score lower than clustered ones."""
    angles = torch.linspace(0, 2 * math.pi, 9, dtype=torch.float64)[:-1]
    spread = torch.stack([angles.cos(), angles.sin()], 1)
    clustered = torch.stack([(angles / 8).cos(), (angles / 8).sin()], 1)
    assert float(koleo_loss(spread)) < float(koleo_loss(clustered))
    x = (_randn(4, 16, 3) * 0.05 + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)).requires_grad_()
    opt = torch.optim.SGD([x], lr=0.01)

    def min_gap(z):
        u = F.normalize(z.detach(), dim=1)
        return float((torch.cdist(u, u) + 10 * torch.eye(16, dtype=torch.float64)).min())
    before = min_gap(x)
    for _ in range(50):
        opt.zero_grad()
        koleo_loss(x).backward()
        opt.step()
    assert min_gap(x) > 2 * before


def test_block_masks_by_hand_and_the_masking_ratio():
    rng = random.Random(0)
    for target in (4.9, 12.0, 24.5):
        m = block_mask(rng, 7, 7, target)
        assert m.shape == (7, 7) and 0 < m.sum() <= math.ceil(target)
    assert block_mask(rng, 7, 7, 0.0).sum() == 0
    big = np.mean([block_mask(rng, 7, 7, 0.5 * 49).sum() for _ in range(200)])
    assert 0.4 * 49 < big <= 0.5 * 49 + 1  # the blocks fill close to the target
    m = _ibot(mask_probability=0.5, mask_ratio_min=0.2, mask_ratio_max=0.4)
    masks = m.masks(2, 200, 7, 7)
    counts = masks.sum(1).double()
    assert masks.shape == (400, 49) and masks.dtype == torch.bool
    assert 0.4 < float((counts > 0).double().mean()) < 0.6  # mask_probability
    assert float(counts.max()) <= 0.4 * 49 + 1 and float(counts[counts > 0].min()) >= 1


def test_masks_are_reproducible_and_each_rank_takes_its_block_of_the_global_batch(monkeypatch):
    a, b = _ibot(), _ibot()
    assert torch.equal(a.masks(2, 6, 7, 7), b.masks(2, 6, 7, 7))
    assert set(a.generators()) == {"mask"}
    state = a.gen.get_state()
    whole = a.masks(2, 6, 7, 7).view(2, 6, 49)
    for r in range(2):  # two processes of 3 images each draw the same global masks and take their own
        a.gen.set_state(state)
        monkeypatch.setattr(ibot_mod, "world_size", lambda: 2)
        monkeypatch.setattr(ibot_mod, "rank", lambda r=r: r)
        assert torch.equal(a.masks(2, 3, 7, 7).view(2, 3, 49), whole[:, 3 * r:3 * r + 3])


def _student_head_calls(m, views, state):
    """The student head's outputs in one forward with the mask generator at ``state``: [CLS logits, patch logits]."""
    out = []
    hook = m.head.register_forward_hook(lambda mod, inp, o: out.append(o.detach().clone()))
    m.gen.set_state(state)
    try:
        with torch.no_grad():
            m(views)
    finally:
        hook.remove()
    return out


def test_the_student_never_sees_a_masked_patch():
    """The defining property: the masked view's patches are replaced by the mask token (position kept), so the
    pixels of a masked patch change nothing in the student; a visible patch's pixels do."""
    m = _ibot(mask_probability=1.0, mask_ratio_min=0.3, mask_ratio_max=0.4)
    m.eval()
    views = _views()
    state = m.gen.get_state()
    mask = m.masks(2, 4, 7, 7)
    base = _student_head_calls(m, views, state)
    patches = [m.backbone.patchify(v) for v in views]
    masked_p, visible_p = [p.clone() for p in patches], [p.clone() for p in patches]
    for v in range(2):
        for i in range(4):
            row = mask[v * 4 + i]
            masked_p[v][i, row] = torch.rand(int(row.sum()), 16, dtype=torch.float64)
            visible_p[v][i, ~row] = torch.rand(int((~row).sum()), 16, dtype=torch.float64)
    same = _student_head_calls(m, [m.backbone.unpatchify(p, 7, 7) for p in masked_p], state)
    other = _student_head_calls(m, [m.backbone.unpatchify(p, 7, 7) for p in visible_p], state)
    for a, b, c in zip(base, same, other):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(a, c)


def test_the_module_loss_rebuilt_by_hand_and_the_patch_centre():
    m = _ibot(koleo_weight=0.3, patch_weight=0.7, mask_probability=0.75)
    views, bb, p = _views(), m.backbone, m.params
    state = m.gen.get_state()
    mask = m.masks(2, 4, 7, 7)
    x = torch.cat(views)
    with torch.no_grad():
        tokens = bb.embed(x)
        filler = m.mask_token + ibot_mod.sincos_2d(16, 7, 7, dtype=torch.float64)
        z = bb.encode(torch.where(mask[..., None], filler, tokens))
        tz = m.teacher[0].encode(m.teacher[0].embed(x))  # the teacher: the full view
        s, t = m.head(z[:, 0]), m.teacher[1](tz[:, 0])
        t_patch = m.teacher[1](tz[:, 1:].flatten(0, 1)).view(8, 49, 12).numpy()  # the head takes (rows, D)
        s_patch = m.head(z[:, 1:].flatten(0, 1)).view(8, 49, 12).numpy()
        cls = dino_loss(s[:4], s[4:], t[:4], t[4:], m.center, 0.1, m.teacher_temp)
        koleo = _koleo_numpy(z[:4, 0].numpy()) + _koleo_numpy(z[4:, 0].numpy())
    # the patch term: the teacher's and the student's logits of the same view and token
    per_token = -(_softmax((t_patch - m.patch_center.numpy()) / float(m.teacher_temp)) *
                  np.log(_softmax(s_patch / 0.1))).sum(-1)
    mk = mask.numpy()
    patch = np.mean([(per_token[i] * mk[i]).sum() / max(mk[i].sum(), 1) for i in range(8)])
    m.gen.set_state(state)
    m.train()
    loss = float(m(views).detach())
    assert loss == pytest.approx(float(cls) + 0.7 * patch + 0.3 * koleo, rel=1e-10)
    # both centres from zero: c ← 0.1 · mean of the teacher's logits (patch centre: over every patch token)
    torch.testing.assert_close(m.center, 0.1 * t.mean(0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(m.patch_center, 0.1 * torch.from_numpy(t_patch).mean((0, 1)), rtol=1e-12,
                               atol=1e-14)
    assert p.head_bn is False


def test_gradients_reach_the_student_and_the_mask_token_only():
    m = _ibot(mask_probability=1.0, koleo_weight=0.1)
    m(_views()).backward()
    assert all(q.grad is None for q in m.teacher.parameters())
    assert m.mask_token.grad is not None and m.mask_token.grad.abs().sum() > 0
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in m.backbone.parameters())


def test_config_checks_and_the_dinov2_config():
    with pytest.raises(ConfigError, match=r"^config error: model.backbone: ibot needs the vit backbone "
                                          r"\(model.backbone: vit\), not cnn$"):
        load_config({"method": {"name": "ibot"}})
    with pytest.raises(ConfigError, match="vit_pool"):
        load_config({"model": {**TINY, "vit_pool": "grid"}, "method": {"name": "ibot"}})
    with pytest.raises(ConfigError, match="mask_ratio_min"):
        load_config({"model": TINY, "method": {"name": "ibot", "mask_ratio_min": 0.4, "mask_ratio_max": 0.3}})
    with pytest.raises(ConfigError, match="local_crops"):
        load_config({"model": TINY, "method": {"name": "ibot"}, "augment": {"local_crops": 2}})
    cfg = load_config("configs/dinov2_fmnist.yaml")
    assert cfg.method["name"] == "ibot" and cfg.method["koleo_weight"] == 0.1
    assert load_config("configs/ibot_fmnist.yaml").method["koleo_weight"] == 0.0


def _train(m, opt, batches, start=0):
    losses = []
    for i, v in enumerate(batches, start):
        opt.zero_grad()
        loss = m(v)
        loss.backward()
        opt.step()
        m.on_step((i + 1) / 8)
        losses.append(float(loss.detach()))
    return losses


def test_resumes_exactly_from_the_state_dict_and_the_mask_generator():
    batches = [_views(seed) for seed in range(4)]
    m = _ibot()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    full = _train(m, opt, batches)
    a = _ibot()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    first = _train(a, opt_a, batches[:2])
    saved = ({k: v.clone() for k, v in a.state_dict().items()}, opt_a.state_dict(), a.gen.get_state())
    b = _ibot(seed=5)  # other weights and another mask seed until loaded
    b.load_state_dict(saved[0])
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    opt_b.load_state_dict(saved[1])
    b.gen.set_state(saved[2])
    assert first + _train(b, opt_b, batches[2:], start=2) == full
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in m.state_dict().items())
    assert {"center", "patch_center", "teacher_temp", "mask_token"} <= set(m.state_dict())
