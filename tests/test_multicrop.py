"""Multi-crop (Caron et al. 2020, SwAV; DINO): the recipe's 2 global + k local views (count, sizes, seeding, smaller
area), encoding one batch per resolution, the DINO and SwAV multi-crop losses against explicit loops over the
(global, other view) pairs, SwAV's codes from the global views only, DINO's teacher and centre from the global views
only, the config error for a method without multi-crop, and short training runs."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.augment import build_recipe, recipe_from_config, symmetric
from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.methods import METHODS
from selfsup.methods.dino import DINO, dino_loss, multi_crop_dino_loss
from selfsup.methods.swav import SwAV, multi_crop_swapped_prediction, sinkhorn, swapped_prediction
from selfsup.models import build_backbone
from selfsup.streams.strategies import Distill
from selfsup.workflows import pretrain

from .helpers import _sinkhorn_by_hand
from .helpers import tiny_cfg


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is much faster than several on a busy machine. (The tests also avoid
    torch.testing.assert_close, whose first call imports torch.distributed.tensor: seconds without cached bytecode.)"""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _batch(n=8, c=1, s=28):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(0))


def _views(seed, n=6, k=2, size=12, local=6):
    """2 global views of ``size`` px and ``k`` local ones of ``local`` px (float64)."""
    g = torch.Generator().manual_seed(seed)
    return ([torch.rand(n, 1, size, size, generator=g, dtype=torch.float64) for _ in range(2)]
            + [torch.rand(n, 1, local, local, generator=g, dtype=torch.float64) for _ in range(k)])


# ------------------------------------------------------------------------------------------------ the recipe
def test_recipe_gives_two_global_and_k_local_views_seeded():
    x = _batch()
    r = build_recipe("symmetric", local_crops=3, local_crop_scale=(0.05, 0.4), local_size=12)
    a = r(x, torch.Generator().manual_seed(1))
    assert [tuple(v.shape) for v in a] == [(8, 1, 28, 28)] * 2 + [(8, 1, 12, 12)] * 3
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 and v.dtype == x.dtype for v in a)
    b = r(x, torch.Generator().manual_seed(1))
    c = r(x, torch.Generator().manual_seed(2))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.allclose(a[2], c[2])
    assert not torch.allclose(a[2], a[3]) and not torch.allclose(a[3], a[4])  # the local crops differ
    # local_crops = 0: the two views of today, bit for bit
    plain = symmetric()(x, torch.Generator().manual_seed(1))
    off = build_recipe("symmetric", local_crops=0)(x, torch.Generator().manual_seed(1))
    assert len(off) == 2 and all(torch.equal(u, v) for u, v in zip(plain, off))
    # and the global views of a multi-crop recipe are those views too (the local crops are drawn after them)
    assert all(torch.equal(u, v) for u, v in zip(plain, a[:2]))


def test_local_crops_cover_less_of_the_image():
    """Channel 0 is a horizontal ramp, channel 1 a vertical one: the ranges a crop spans of each give the share of
    the image's width and height it covers, their product its area."""
    n, s = 64, 28
    ramp = torch.linspace(0, 1, s)
    x = torch.stack([ramp.view(1, s).expand(s, s), ramp.view(s, 1).expand(s, s)]).expand(n, 2, s, s).contiguous()
    r = build_recipe("symmetric", local_crops=2, local_crop_scale=(0.05, 0.4), local_size=12,
                     crop_scale=(0.4, 1.0), jitter_p=0.0, grayscale_p=0.0, flip_p=0.0)
    views = r(x, torch.Generator().manual_seed(0))

    def area(v):
        span = v.amax(dim=(2, 3)) - v.amin(dim=(2, 3))  # n x 2
        return span.prod(1)

    glob = torch.cat([area(v) for v in views[:2]])
    loc = torch.cat([area(v) for v in views[2:]])
    assert 0.5 < float(glob.mean()) < 0.85  # crop_scale (0.4, 1): 0.7 on average
    assert 0.1 < float(loc.mean()) < 0.35  # local_crop_scale (0.05, 0.4): 0.225 on average
    assert float(loc.max()) < 0.5 <= float(glob.max())


def test_local_crops_take_the_recipes_colour_settings():
    sym = build_recipe("symmetric", local_crops=2, local_size=10, jitter_p=0.3, grayscale_p=0.1)
    assert sym.local.jitter_p == 0.3 and sym.local.grayscale_p == 0.1 and sym.local.out_size == 10
    assert (sym.local.blur_p, sym.local.solarize_p) == (sym.views[0].blur_p, sym.views[0].solarize_p) == (0, 0)
    asym = build_recipe("asymmetric", local_crops=2, local_crop_scale=(0.1, 0.3), local_size=10)
    assert (asym.local.blur_p, asym.local.solarize_p) == (0.5, 0.0)  # DINO's local crops
    assert asym.local.crop_scale == (0.1, 0.3) and asym.local.crop_ratio == asym.views[0].crop_ratio
    with pytest.raises(ValueError, match="supervised"):
        build_recipe("supervised", local_crops=2)


def test_config_keys_and_the_error_for_a_method_without_multi_crop():
    cfg = load_config({"method": {"name": "dino"}, "augment": {"local_crops": 4, "local_size": 10}})
    views = recipe_from_config(cfg.augment, METHODS["dino"].recipe)(_batch(4), torch.Generator().manual_seed(0))
    assert [v.shape[-1] for v in views] == [28, 28, 10, 10, 10, 10]
    assert load_config({}).augment.local_crops == 0
    assert {n for n, c in METHODS.items() if c.multi_crop} == {"swav", "dino", "msn", "mmcr"}
    with pytest.raises(ConfigError) as e:
        load_config({"method": {"name": "byol"}, "augment": {"local_crops": 2}})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("config error: augment.local_crops: byol")
    assert "swav, dino" in msg
    for bad, key in (({"local_crop_scale": [0.5, 0.2]}, "local_crop_scale"), ({"local_crops": -1}, "local_crops"),
                     ({"local_size": 0}, "local_size")):
        with pytest.raises(ConfigError, match=key):
            load_config({"method": {"name": "swav"}, "augment": {"local_crops": 2, **bad}})


# ------------------------------------------------------------------------------------------------ encoding
def test_views_of_two_sizes_are_encoded_as_one_batch_per_resolution():
    torch.manual_seed(0)
    m = DINO(build_backbone("cnn", 1, widths=(4, 8)), DINO.Params(proj_hidden=16, proj_dim=8, out_dim=12)).double()
    views = _views(3, n=5, k=3)
    calls = []
    h = m.backbone.register_forward_hook(lambda mod, i, o: calls.append(tuple(i[0].shape)))
    z = m.encode_joint(views, m.head)
    h.remove()
    assert calls == [(10, 1, 12, 12), (15, 1, 6, 6)]
    assert [tuple(v.shape) for v in z] == [(5, 12)] * 5
    m.eval()  # BatchNorm on running statistics: the same as encoding every view alone
    with torch.no_grad():
        for v, zv in zip(views, m.encode_joint(views, m.head)):
            np.testing.assert_allclose(zv.numpy(), m.head(m.backbone(v)).numpy(), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ DINO
def _pairs_by_hand(student_logits, teacher_logits, c, ts, tt):
    """mean over the pairs (teacher view i, student view j), j != i, of the batch mean of -sum_k P_t log P_s."""
    pair_means = []
    for i in range(len(teacher_logits)):
        for j in range(len(student_logits)):
            if j == i:
                continue
            terms = []
            for b in range(len(student_logits[j])):
                pt = _softmax((teacher_logits[i][b] - c) / tt)
                log_ps = np.log(_softmax(student_logits[j][b] / ts))
                terms.append(-sum(pt[k] * log_ps[k] for k in range(len(pt))))
            pair_means.append(sum(terms) / len(terms))
    return sum(pair_means) / len(pair_means)


def test_dino_multi_crop_loss_by_hand():
    s = [_randn(i, 3, 5) for i in range(5)]  # 2 global + 3 local student views
    t = [_randn(10 + i, 3, 5) for i in range(2)]
    c = _randn(20, 5) * 0.3
    loss = float(multi_crop_dino_loss(s, t, c, 0.1, 0.04))
    expected = _pairs_by_hand([x.numpy() for x in s], [x.numpy() for x in t], c.numpy(), 0.1, 0.04)
    assert loss == pytest.approx(expected, rel=1e-10)
    # 8 pairs: (0, 1..4) and (1, 0, 2..4); with two views it is the two-view loss
    assert float(multi_crop_dino_loss(s[:2], t, c, 0.1, 0.04)) == pytest.approx(
        float(dino_loss(s[0], s[1], t[0], t[1], c, 0.1, 0.04)), rel=1e-12)


def _dino():
    torch.manual_seed(0)
    return DINO(build_backbone("cnn", 1, widths=(4, 8)), DINO.Params(proj_hidden=16, proj_dim=8, out_dim=12)).double()


def test_dino_module_teacher_sees_the_global_views_and_the_student_all():
    m = _dino()
    m.eval()  # running BatchNorm statistics: every view can be encoded on its own for the hand computation
    m.teacher_temp.fill_(0.05)
    with torch.no_grad():
        m.center.copy_(_randn(30, 12) * 0.1)
    views = _views(4)
    with torch.no_grad():
        loss = float(m(views))
        s = [m.head(m.backbone(v)).numpy() for v in views]
        t = [m.teacher(v).numpy() for v in views[:2]]
    assert loss == pytest.approx(_pairs_by_hand(s, t, m.center.numpy(), 0.1, 0.05), rel=1e-9)


def test_dino_centre_comes_from_the_global_views_only():
    m = _dino()
    views = _views(5)
    with torch.no_grad():
        t = m.teacher(torch.cat(views[:2]))  # train-mode BatchNorm: batch statistics of the two global views
        m(views)
    np.testing.assert_allclose(m.center.numpy(), 0.1 * t.mean(0).numpy(), rtol=1e-12)
    other = _dino()
    with torch.no_grad():
        other(views[:2] + _views(6)[2:])  # other local crops: the same centre
    assert torch.equal(other.center, m.center)


# ------------------------------------------------------------------------------------------------ SwAV
def test_swav_multi_crop_loss_by_hand():
    s = [_randn(40 + i, 4, 3) for i in range(4)]  # logits of 2 global + 2 local views
    q = [sinkhorn(_randn(50 + i, 4, 3), 0.5, 3) for i in range(2)]  # codes of the 2 global views
    loss = float(multi_crop_swapped_prediction(s, q))
    pair_means = []
    for g in range(2):
        for v in range(4):
            if v == g:
                continue
            total = 0.0
            for i in range(4):
                log_z = np.log(sum(np.exp(float(x)) for x in s[v][i]))
                total -= sum(float(q[g][i, k]) * (float(s[v][i, k]) - log_z) for k in range(3))
            pair_means.append(total / 4)
    assert len(pair_means) == 6
    assert loss == pytest.approx(sum(pair_means) / 6, rel=1e-10)
    assert float(multi_crop_swapped_prediction(s[:2], q)) == pytest.approx(
        float(swapped_prediction(s[0], s[1], q[0], q[1])), rel=1e-12)


def _swav():
    torch.manual_seed(0)
    m = SwAV(build_backbone("cnn", 1, widths=(4,)), SwAV.Params(proj_hidden=8, proj_dim=4, num_prototypes=5)).double()
    m.on_step(0.5)  # past the freeze; prototypes normalised
    return m


def test_swav_module_by_hand_with_codes_from_the_global_views():
    m = _swav()
    m.eval()
    views = _views(7)
    with torch.no_grad():
        loss = float(m(views))
        z = [F.normalize(m.projector(m.backbone(v)), dim=1).numpy() for v in views]
    c = m.prototypes.weight.detach().numpy()
    scores = [zv @ c.T for zv in z]
    codes = [_sinkhorn_by_hand(scores[g].tolist(), 0.05, 3) for g in range(2)]

    def ce(q, s):
        s = s / 0.1
        return -(q * (s - np.log(np.exp(s).sum(1, keepdims=True)))).sum(1).mean()

    pairs = [ce(codes[g], scores[v]) for g in range(2) for v in range(len(views)) if v != g]
    assert loss == pytest.approx(np.mean(pairs), rel=1e-9)


def test_swav_codes_ignore_the_local_views():
    """Other local crops change the local views' prototype scores (and the loss) but not the codes."""
    m = _swav()
    m.eval()
    seen = []
    codes = m.codes
    m.codes = lambda z, w, view: seen.append(codes(z, w, view)) or seen[-1]
    views = _views(8)
    with torch.no_grad():
        a = float(m(views))
        b = float(m(views[:2] + _views(9)[2:]))
    assert len(seen) == 4  # two codes per forward: one per global view
    assert torch.equal(seen[0], seen[2])
    assert torch.equal(seen[1], seen[3])
    assert a != pytest.approx(b, rel=1e-6)


def test_stream_distillation_pairs_each_views_new_and_old_features():
    """The distill strategy's old encoder sees the views as the method's backbone did, one batch per resolution, and
    each view's new features are paired with its own old ones."""
    m = _dino()
    d = Distill(weight=1.0, hidden=8)
    d.end_chunk(m, None, 0, None, None, None)  # the old encoder: a frozen copy of the backbone (eval mode)
    d.begin_chunk(m, 1, 0)
    d.module = d.module.double()
    views = _views(10, n=4)
    with d.watching(m):
        m(views)
    penalty = float(d.penalty(m, views).detach())
    with torch.no_grad():  # by hand: train-mode features per resolution, old (eval-mode) features view by view
        new = torch.cat([m.backbone(torch.cat(views[:2])), m.backbone(torch.cat(views[2:]))])
        old = torch.cat([d.old(v) for v in views])
        p = F.normalize(d.module(new), dim=1)
    expected = float((2 - 2 * (p * F.normalize(old, dim=1)).sum(1)).mean())
    assert penalty == pytest.approx(expected, rel=1e-6)  # the penalty is computed in float32


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("method", ["swav", "dino"])
def test_short_multi_crop_training_runs(npz_data, tmp_path, method):  # noqa: F811
    cfg = tiny_cfg(npz_data, tmp_path, method, method, max_steps=4)
    cfg["augment"] = {"local_crops": 2, "local_size": 8}
    r = pretrain(cfg, progress=False, evaluate=False)
    assert r.steps == 4
    assert (r.run_dir / "backbone.safetensors").exists()
    rows = [json.loads(ln) for ln in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row for row in rows if "loss" in row]
    assert [row["step"] for row in losses] == [4] and np.isfinite(losses[-1]["loss"])
