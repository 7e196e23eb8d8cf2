"""I-JEPA: the multi-block masks (disjoint context and targets, one block size per batch, a context cut to the batch's
smallest, termination on a tiny grid), the loss rebuilt by hand (smooth-L1 as the authors' F.smooth_l1_loss, or MSE)
from layer-normalised EMA-target tokens, the defining property (the prediction sees only the context patches), the
target encoder's stop-gradient and linear EMA, the config checks and an exact resume."""
import random

import numpy as np
import pytest
import torch

from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.methods import build_method
from selfsup.methods import ijepa as ijepa_mod
from selfsup.methods.ijepa import block_size, multi_block_masks

TINY = {"backbone": "vit", "vit_dim": 16, "vit_depth": 1, "vit_heads": 2}


def _ijepa(seed=0, **params):
    p = {"name": "ijepa", "pred_dim": 8, "pred_depth": 1, "pred_heads": 2, **params}
    torch.manual_seed(seed)
    return build_method(load_config({"model": TINY, "method": p}), 1).double()


def _view(seed=1, n=4):
    return [torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)]


class _FixedRng(random.Random):
    def __init__(self, u):
        super().__init__(0)
        self.u = u

    def uniform(self, a, b):
        return a + self.u * (b - a)


def test_block_size_by_hand():
    # 49 patches, scale 0.2 → int(9.8) = 9, aspect 1 → 3 x 3; aspect 1.5 (u = 1) → round(√13.5) x round(√6) = 4 x 2
    assert block_size(_FixedRng(0.0), 7, 7, (0.2, 0.3), (1.0, 1.0)) == (3, 3)
    assert block_size(_FixedRng(1.0), 7, 7, (0.1, 0.2), (0.75, 1.5)) == (4, 2)
    assert block_size(_FixedRng(1.0), 7, 7, (1.0, 1.0), (1.0, 1.0)) == (6, 6)  # always < the grid
    assert block_size(_FixedRng(0.0), 3, 3, (0.01, 0.01), (1.0, 1.0)) == (1, 1)  # never empty


def test_multi_block_masks_disjoint_same_sizes_and_cut_to_the_smallest_context():
    p = ijepa_mod.IJEPAParams()
    for seed in range(20):
        ctx, tgt = multi_block_masks(random.Random(seed), 16, 7, 7, p)
        assert tgt.shape[:2] == (16, 4) and ctx.shape[0] == 16
        n_t = tgt.shape[2]
        rows, cols = tgt // 7, tgt % 7  # each target a full rectangle, the same size in the whole batch
        h, w = int(rows[0, 0].max() - rows[0, 0].min() + 1), int(cols[0, 0].max() - cols[0, 0].min() + 1)
        assert h * w == n_t and 6 <= n_t <= 12  # int(49 · [0.15, 0.2]) = 7-9 patches, aspect, rounding
        assert ((rows.amax(-1) - rows.amin(-1) + 1) == h).all() and ((cols.amax(-1) - cols.amin(-1) + 1) == w).all()
        for i in range(16):
            c = ctx[i].tolist()
            assert c == sorted(set(c)) and len(c) >= p.min_keep
            assert not set(c) & set(tgt[i].flatten().tolist())  # targets removed from the context
    lengths = []
    rng = random.Random(0)
    t_size = block_size(rng, 7, 7, (0.15, 0.2), (0.75, 1.5))
    for _ in range(16):  # by hand: the uncut contexts vary, the batch keeps the first (row-major) of each
        tgt = [ijepa_mod.place(rng, 7, 7, *t_size) for _ in range(4)]
        lengths.append(len(ijepa_mod.place(rng, 7, 7, 6, 6).difference(*tgt)))
    assert len(set(lengths)) > 1


def test_masks_end_on_a_tiny_grid_by_dropping_target_exclusions():
    p = ijepa_mod.IJEPAParams(min_keep=9)  # impossible on 3x3: every exclusion is dropped in turn
    ctx, tgt = multi_block_masks(random.Random(0), 8, 3, 3, p)
    assert ctx.shape == (8, 4) and tgt.shape == (8, 4, 1)  # a 2x2 context, 1-patch targets


def test_each_rank_takes_its_block_of_the_global_masks(monkeypatch):
    a, b = _ijepa(), _ijepa()
    assert all(torch.equal(u, v) for u, v in zip(a.masks(1, 6, 7, 7), b.masks(1, 6, 7, 7)))
    assert set(a.generators()) == {"mask"}
    state = a.gen.get_state()
    ctx, tgt = a.masks(1, 6, 7, 7)
    for r in range(2):
        a.gen.set_state(state)
        monkeypatch.setattr(ijepa_mod, "world_size", lambda: 2)
        monkeypatch.setattr(ijepa_mod, "rank", lambda r=r: r)
        c, t = a.masks(1, 3, 7, 7)
        assert torch.equal(c, ctx[3 * r:3 * r + 3]) and torch.equal(t, tgt[3 * r:3 * r + 3])


def _smooth_l1(d):
    return np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5)


@pytest.mark.parametrize("loss", ["smooth_l1", "mse"])
def test_the_loss_rebuilt_by_hand(loss):
    m = _ijepa(loss=loss)
    with torch.no_grad():  # a target encoder apart from the online one, as after training
        for q in m.target.parameters():
            q.add_(0.1 * torch.randn_like(q))
    (x,) = _view()
    state = m.gen.get_state()
    ctx, tgt = m.masks(1, 4, 7, 7)
    bb, pr = m.backbone, m.predictor
    with torch.no_grad():
        h = m.target.encode(m.target.embed(x))[:, 1:].numpy()  # the full image; patch tokens, no CLS
        h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)  # LayerNorm, no affine
        z = bb.encode(torch.stack([bb.embed(x)[i, ctx[i]] for i in range(4)]))  # the context patches only
        pos = ijepa_mod.sincos_2d(8, 7, 7, dtype=torch.float64)
        sq = []
        for i in range(4):
            y = pr.embed(z[i]) + torch.cat([torch.zeros(1, 8, dtype=torch.float64), pos[ctx[i]]])
            for j in range(4):  # each target block predicted from the context + its own mask tokens
                u = torch.cat([y, pr.mask_token + pos[tgt[i, j]]])[None]
                for blk in pr.blocks:
                    u = blk(u)
                pred = pr.proj(pr.norm(u[0, -tgt.shape[2]:])).numpy()
                d = pred - h[i, tgt[i, j].numpy()]
                sq.append(_smooth_l1(d) if loss == "smooth_l1" else d * d)
    m.gen.set_state(state)
    assert float(m([x]).detach()) == pytest.approx(np.mean(sq), rel=1e-10)


def test_the_prediction_sees_only_the_context_patches():
    """The defining property: the predictions come from the context block alone (the targets' pixels, and any
    patch outside the context, reach the loss only through the EMA target encoder)."""
    m = _ijepa()
    (x,) = _view()
    state = m.gen.get_state()
    ctx, _ = m.masks(1, 4, 7, 7)
    outs = []
    hook = m.predictor.register_forward_hook(lambda mod, inp, o: outs.append(o.detach().clone()))
    p = m.backbone.patchify(x)
    outside, inside = p.clone(), p.clone()
    for i in range(4):
        keep = torch.zeros(49, dtype=torch.bool)
        keep[ctx[i]] = True
        outside[i, ~keep] = torch.rand(int((~keep).sum()), 16, dtype=torch.float64)
        inside[i, ctx[i][0]] += 0.5
    losses = []
    for images in (x, m.backbone.unpatchify(outside, 7, 7), m.backbone.unpatchify(inside, 7, 7)):
        m.gen.set_state(state)
        with torch.no_grad():
            losses.append(float(m([images])))
    hook.remove()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    assert losses[0] != losses[1]  # the targets changed
    assert not torch.allclose(outs[0], outs[2])


def test_stop_gradient_and_the_linear_ema():
    m = _ijepa(base_momentum=0.9)
    m(_view()).backward()
    assert all(q.grad is None for q in m.target.parameters())
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in m.backbone.parameters())  # CLS included
    assert all(q.grad is not None for q in m.predictor.parameters())
    with torch.no_grad():
        for q in m.backbone.parameters():
            q.add_(1.0)
    before = [q.clone() for q in m.target.parameters()]
    m.on_step(0.25)  # m = 0.9 + 0.1 · 0.25 (linear, src/train.py:228; BYOL's cosine would give 0.9146)
    for tb, ta, s in zip(before, m.target.parameters(), m.backbone.parameters()):
        torch.testing.assert_close(ta, 0.925 * tb + 0.075 * s, rtol=1e-12, atol=1e-12)


def test_config_checks_one_view_and_the_shipped_config():
    with pytest.raises(ConfigError, match=r"^config error: model.backbone: ijepa needs the vit backbone "
                                          r"\(model.backbone: vit\), not cnn$"):
        load_config({"method": {"name": "ijepa"}})
    with pytest.raises(ConfigError, match="pred_dim"):
        load_config({"model": TINY, "method": {"name": "ijepa", "pred_dim": 12, "pred_heads": 8}})
    with pytest.raises(ConfigError, match="target_scale"):
        load_config({"model": TINY, "method": {"name": "ijepa", "target_scale": [0.3, 0.2]}})
    cfg = load_config("configs/ijepa_fmnist.yaml")
    assert ijepa_mod.IJEPA.recipe == "supervised" and cfg.augment.flip_p == 0.0
    m = _ijepa().float()
    assert torch.isfinite(m([torch.rand(3, 1, 28, 28)]))
    assert m.backbone(torch.rand(3, 1, 28, 28)).shape == (3, 16)
    assert torch.isfinite(m([torch.rand(3, 1, 28, 28), torch.rand(3, 1, 28, 28)]))  # two views: masked apart


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
    batches = [_view(seed) for seed in range(4)]
    m = _ijepa()
    full = _train(m, torch.optim.AdamW(m.parameters(), lr=1e-2), batches)
    a = _ijepa()
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2)
    first = _train(a, opt_a, batches[:2])
    b = _ijepa(seed=5)
    b.load_state_dict(a.state_dict())
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2)
    opt_b.load_state_dict(opt_a.state_dict())
    b.gen.set_state(a.gen.get_state())
    assert first + _train(b, opt_b, batches[2:], start=2) == full
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in m.state_dict().items())
    assert any(k.startswith("target.") for k in m.state_dict())
