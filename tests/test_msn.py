"""MSN / PMSN: the loss against lightly's MSNLoss and the authors' Sinkhorn re-done by hand in float64 numpy, PMSN's
power-law KL, the defining properties (the anchor sees only its kept patches, the target the whole image; the
regulariser drives the mean prediction to the prior; sharpening), the stop-gradient and the EMA schedule, the ViT
readout of a masked token set, the config check, and two DDP processes against one."""
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.config import load_config
from selfsup.distributed import convert_sync_batchnorm
from selfsup.errors import ConfigError
from selfsup.methods import build_method
from selfsup.methods.msn import MeanEntropyPrior, log_prior, momentum_at, msn_loss
from selfsup.models.vit import ViT, ViTSpec

from .helpers import leave_worker

TINY = {"backbone": "vit", "vit_dim": 8, "vit_depth": 1, "vit_heads": 2}


def _randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _msn(seed=0, **params):
    cfg = load_config({"model": TINY, "method": {"name": "msn", "proj_hidden": 16, "proj_dim": 8,
                                                 "num_prototypes": 6, **params}})
    torch.manual_seed(seed)
    return build_method(cfg, 1).double()


def _views(seed=1, n=4, side=12):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, side, side, generator=g, dtype=torch.float64) for _ in range(2)]


# -------------------------------------------------------------------------------------- lightly's loss, by hand
def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _softmax_rows(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _lightly_sinkhorn(p, iterations):
    """lightly msn_loss.py:76-103 (= facebookresearch/msn src/losses.py:93-127 in one process)."""
    b, k = p.shape
    q = p.T / p.sum()
    for _ in range(iterations):
        q = q / q.sum(1, keepdims=True) / k  # every prototype: mass 1/K
        q = q / q.sum(0, keepdims=True) / b  # every sample: mass 1/B
    return (q * b).T


def _lightly_msn(anchors, targets, protos, tau, sharpen, iterations, weight, prior=None):
    """lightly MSNLoss.forward (msn_loss.py:227-262), its regulariser (264-275), or PMSNLoss's (pmsn_loss.py:73-80)
    with ``prior``, step by step in numpy."""
    views = len(anchors) // len(targets)
    w = _unit(protos)
    pa = _softmax_rows(_unit(anchors) @ w.T / tau)
    pt = _softmax_rows(_unit(targets) @ w.T / tau) ** (1 / sharpen)
    pt = pt / pt.sum(1, keepdims=True)
    if iterations:
        pt = _lightly_sinkhorn(pt, iterations)
    pt = np.tile(pt, (views, 1))
    loss = np.mean([sum(-pt[i, k] * math.log(pa[i, k]) for k in range(pa.shape[1])) for i in range(len(pa))])
    p_bar = pa.mean(0)
    if prior is None:  # log K − H(p̄)
        reg = sum(p * math.log(p) for p in p_bar) + math.log(len(p_bar))
    else:  # F.kl_div(input=log p̄, target=π, reduction="sum") = Σ π (log π − log p̄)
        reg = sum(prior[k] * (math.log(prior[k]) - math.log(p_bar[k])) for k in range(len(p_bar)))
    return loss + weight * reg


@pytest.mark.parametrize("iterations", [0, 3])
def test_msn_loss_matches_lightly_msnloss_by_hand(iterations):
    anchors, targets, protos = _randn(0, 6, 5), _randn(1, 3, 5), _randn(2, 7, 5)  # 2 anchor views of 3 images
    uniform = log_prior(7, "uniform", 0.0)
    ours = float(msn_loss(anchors, targets, protos, 0.1, 0.25, iterations, MeanEntropyPrior(1.0, uniform)))
    ref = _lightly_msn(anchors.numpy(), targets.numpy(), protos.numpy(), 0.1, 0.25, iterations, 1.0)
    assert ours == pytest.approx(ref, rel=1e-10)
    # λ = 0: the cross-entropy alone, smaller (the regulariser is a KL, ≥ 0)
    ce = float(msn_loss(anchors, targets, protos, 0.1, 0.25, iterations, MeanEntropyPrior(0.0, uniform)))
    assert ce == pytest.approx(_lightly_msn(anchors.numpy(), targets.numpy(), protos.numpy(), 0.1, 0.25,
                                            iterations, 0.0), rel=1e-10)
    assert ce < ours


def test_pmsn_regulariser_is_kl_of_the_mean_prediction_to_a_power_law():
    anchors, targets, protos = _randn(3, 8, 4), _randn(4, 4, 4), _randn(5, 6, 4)
    pi = np.arange(1, 7, dtype=np.float64) ** -0.25
    pi /= pi.sum()
    np.testing.assert_allclose(log_prior(6, "power_law", 0.25).exp().numpy(), pi, rtol=1e-12)
    power_law = MeanEntropyPrior(0.7, log_prior(6, "power_law", 0.25))
    ours = float(msn_loss(anchors, targets, protos, 0.1, 0.25, 3, power_law))
    ce = _lightly_msn(anchors.numpy(), targets.numpy(), protos.numpy(), 0.1, 0.25, 3, 0.0)
    p_bar = _softmax_rows(_unit(anchors.numpy()) @ _unit(protos.numpy()).T / 0.1).mean(0)
    kl = sum(p_bar[k] * math.log(p_bar[k] / pi[k]) for k in range(6))  # KL(p̄ ‖ π)
    assert ours == pytest.approx(ce + 0.7 * kl, rel=1e-10)
    # lightly's PMSNLoss takes KL(π ‖ p̄): a different number on the same tensors (recorded, not followed)
    lightly = _lightly_msn(anchors.numpy(), targets.numpy(), protos.numpy(), 0.1, 0.25, 3, 0.7, prior=pi)
    assert abs(lightly - ours) > 1e-4
    # exponent 0: the power law is uniform and PMSN is MSN
    flat = MeanEntropyPrior(0.7, log_prior(6, "power_law", 0.0))
    uniform = MeanEntropyPrior(0.7, log_prior(6, "uniform", 0))
    assert float(msn_loss(anchors, targets, protos, 0.1, 0.25, 3, flat)) == \
        pytest.approx(float(msn_loss(anchors, targets, protos, 0.1, 0.25, 3, uniform)), rel=1e-12)


# ------------------------------------------------------------------------------------------- defining properties
@pytest.mark.parametrize("prior", ["uniform", "power_law"])
def test_the_regulariser_drives_the_mean_prediction_to_the_prior(prior):
    """The regulariser alone (the loss at λ = 1 minus the loss at λ = 0): gradient descent on free
    anchor embeddings takes p̄ from one dominant prototype to π."""
    protos = torch.eye(5, dtype=torch.float64)
    anchors = (torch.tensor([[1.0, 0, 0, 0, 0]], dtype=torch.float64) + 0.3 * _randn(6, 40, 5)).requires_grad_()
    targets = anchors.detach()
    log_pi = log_prior(5, prior, 1.0)

    def p_bar():
        return torch.softmax(torch.nn.functional.normalize(anchors.detach(), dim=1) @ protos.T / 0.1, 1).mean(0)

    start, dominant = float((p_bar() * (p_bar().log() - log_pi)).sum()), float(p_bar()[0])
    for _ in range(300):
        anchors.grad = None
        # the KL term alone
        (msn_loss(anchors, targets, protos, 0.1, 0.25, 0, MeanEntropyPrior(1.0, log_pi))
         - msn_loss(anchors, targets, protos, 0.1, 0.25, 0, MeanEntropyPrior(0.0, log_pi))).backward()
        with torch.no_grad():
            anchors -= 80.0 * anchors.grad  # plain gradient descent (the gradient of a batch mean: ~1/40)
    end = float((p_bar() * (p_bar().log() - log_pi)).sum())
    assert dominant > 0.9 and start > 0.5 and end < 1e-5
    torch.testing.assert_close(p_bar(), log_pi.exp(), atol=2e-3, rtol=0)


def test_targets_are_sharpened_and_sinkhorn_balances_them():
    anchors, targets, protos = _randn(9, 12, 4), _randn(7, 12, 4), _randn(8, 6, 4)
    unit = torch.nn.functional.normalize
    sim = unit(targets, dim=1) @ unit(protos, dim=1).T
    q_sharp = torch.softmax(sim / 0.025, 1)  # τ⁺ = τ·T
    p = torch.softmax(sim / 0.1, 1)
    def ent(d):
        return -(d * d.log()).sum(1)

    assert (ent(q_sharp) < ent(p)).all()  # sharper than the anchor's prediction of the same embedding
    torch.testing.assert_close(q_sharp, p ** 4 / (p ** 4).sum(1, keepdim=True))
    balanced = torch.from_numpy(_lightly_sinkhorn(q_sharp.numpy(), 1000))
    torch.testing.assert_close(balanced.sum(1), torch.ones(12, dtype=torch.float64))
    torch.testing.assert_close(balanced.sum(0), torch.full((6,), 2.0, dtype=torch.float64), atol=1e-6, rtol=0)
    assert float(q_sharp.sum(0).max() - q_sharp.sum(0).min()) > 1.0  # unbalanced before
    log_pa = torch.log_softmax(unit(anchors, dim=1) @ unit(protos, dim=1).T / 0.1, 1)
    for it, q in ((0, q_sharp), (1000, balanced)):  # the cross-entropy's targets
        ce = float(msn_loss(anchors, targets, protos, 0.1, 0.25, it, MeanEntropyPrior(0.0, log_prior(6, "uniform", 0))))
        assert ce == pytest.approx(float(-(q * log_pa).sum(1).mean()), rel=1e-10)


def _loss_at(m, views, state):
    m.gen.set_state(state)
    with torch.no_grad():
        return float(m(views))


def test_the_anchor_sees_only_its_kept_patches_and_the_target_the_whole_image():
    m = _msn(mask_ratio=0.5)
    x0, x1 = _views()
    state = m.gen.get_state()
    noise = torch.rand(4, 9, generator=m.gen)
    masked = torch.argsort(noise, 1)[:, 9 - round(4.5):]  # the largest noise is dropped (MAE's shuffle)
    assert masked.shape == (4, 4)
    base = _loss_at(m, [x0, x1], state)
    assert _loss_at(m, [x0, x1], state) == base
    patches = m.backbone.patchify(x1)
    dropped = patches.clone()
    for i in range(4):
        dropped[i, masked[i]] = torch.rand(4, 16, dtype=torch.float64)
    assert _loss_at(m, [x0, m.backbone.unpatchify(dropped, 3, 3)], state) == pytest.approx(base, rel=1e-12)
    kept = patches.clone()
    keep = torch.argsort(noise, 1)[:, 0]
    kept[torch.arange(4), keep] = torch.rand(4, 16, dtype=torch.float64)
    assert abs(_loss_at(m, [x0, m.backbone.unpatchify(kept, 3, 3)], state) - base) > 1e-6
    target = m.backbone.patchify(x0).clone()
    target[torch.arange(4), masked[:, 0]] = torch.rand(4, 16, dtype=torch.float64)  # any patch of the target
    assert abs(_loss_at(m, [m.backbone.unpatchify(target, 3, 3), x1], state) - base) > 1e-6
    assert _loss_at(m, [x0, x1], state) != _loss_at(m, [x0, x1], m.gen.get_state())  # the next draw: new masks


def test_masked_grid_readout_averages_the_present_tokens():
    vit = ViT(1, ViTSpec(patch=4, dim=8, depth=1, heads=2, pool="grid", grid=2)).double()
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    z = vit.encode(vit.embed(x))
    every = torch.arange(16).expand(2, -1)
    torch.testing.assert_close(vit.pool(z, 4, 4, ids_keep=every), vit.pool(z, 4, 4))
    keep = torch.tensor([[0, 5, 15], [10, 2, 3]])  # grid 4x4 → cells 2x2; row-major patch ids
    zk = torch.cat([z[:, :1], torch.gather(z[:, 1:], 1, keep[..., None].expand(-1, -1, 8))], 1)
    out = vit.pool(zk, 4, 4, ids_keep=keep).view(2, 8, 4)
    t = z[:, 1:]
    torch.testing.assert_close(out[0, :, 0], (t[0, 0] + t[0, 5]) / 2)  # cell (0, 0): patches 0, 1, 4, 5
    torch.testing.assert_close(out[0, :, 3], t[0, 15])
    assert out[0, :, 1].abs().max() == 0 and out[0, :, 2].abs().max() == 0  # no token present
    torch.testing.assert_close(out[1, :, 1], (t[1, 2] + t[1, 3]) / 2)
    torch.testing.assert_close(out[1, :, 3], t[1, 10])


# ------------------------------------------------------------------------------------------------- the module
def test_gradients_stop_at_the_target_and_reach_encoder_projector_prototypes():
    m = _msn()
    m(_views()).backward()
    assert all(p.grad is None for p in m.target.parameters())
    for part in (m.backbone, m.projector):
        assert all(p.grad is not None for p in part.parameters())
    assert m.prototypes.grad is not None and m.prototypes.grad.abs().sum() > 0
    assert {n for n, _ in m.named_parameters()} >= {"prototypes"}


def test_ema_schedule_and_the_state_dict():
    m = _msn(base_momentum=0.9)
    assert [momentum_at(0.9, p) for p in (0.0, 0.5, 1.0)] == pytest.approx([0.9, 0.94, 0.98])
    with torch.no_grad():
        for p in m.projector.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.target.parameters()]
    m.on_step(0.5)
    online = torch.nn.Sequential(m.backbone, m.projector).parameters()
    for tb, ta, s in zip(before, m.target.parameters(), online):
        torch.testing.assert_close(ta, 0.94 * tb + 0.06 * s)
    keys = m.state_dict().keys()
    assert "prototypes" in keys and any(k.startswith("target.") for k in keys) and "log_pi" not in keys
    assert set(m.generators()) == {"mask"}


def test_multi_crop_local_crops_are_further_anchors():
    m = _msn()
    x0, x1 = _views()
    local = [torch.rand(4, 1, 8, 8, dtype=torch.float64) for _ in range(2)]
    state = m.gen.get_state()
    loss = m([x0, x1, *local])
    loss.backward()
    assert torch.isfinite(loss)
    m.gen.set_state(state)
    assert float(m([x0, x1, *local]).detach()) != pytest.approx(_loss_at(m, [x0, x1], state), rel=1e-6)


def test_msn_on_the_cnn_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"^config error: model.backbone: msn needs the vit backbone "
                                          r"\(model.backbone: vit\), not cnn$"):
        load_config({"method": {"name": "msn"}})
    assert load_config({"model": TINY, "method": {"name": "msn", "prior": "power_law"}}).method["prior"] == \
        "power_law"
    for path in ("configs/msn_fmnist.yaml", "configs/pmsn_fmnist.yaml"):
        cfg = load_config(path)
        assert cfg.method["name"] == "msn" and cfg.model.backbone == "vit"
    assert load_config("configs/pmsn_fmnist.yaml").method["prior"] == "power_law"


# ---------------------------------------------------------------------------------------------------- DDP
BATCH = 8


def _setup(seed=0, **params):
    m = _msn(seed, **params)
    g = torch.Generator().manual_seed(1)
    return m, [torch.rand(BATCH, 1, 12, 12, generator=g, dtype=torch.float64) for _ in range(2)]


def _ddp_worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    for name, params in CASES.items():
        m, (x1, x2) = _setup(**params)
        m = convert_sync_batchnorm(m, torch.device("cpu"))
        ddp = torch.nn.parallel.DistributedDataParallel(m, static_graph=True)
        n = len(x1) // world
        sl = slice(rank * n, (rank + 1) * n)  # the trainer deals rank r the r-th block of the batch
        with torch.no_grad():
            ddp([x2[sl], x1[sl]])  # a warm-up forward draws masks as the measured one
        loss = ddp([x1[sl], x2[sl]])
        loss.backward()
        losses = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(losses, loss.detach().view(1))
        if rank == 0:
            grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
            torch.save({"loss": torch.cat(losses), "grads": grads}, f"{out}/{name}.pt")
        del ddp, loss, m
    leave_worker()


CASES = {"msn": {}, "pmsn": {"prior": "power_law"}}


@pytest.mark.slow
def test_two_ddp_processes_match_one_process(tmp_path):
    """Sinkhorn over the global batch, p̄ over the global batch and the global mask noise make 2 ranks of 4 images
    give the loss and gradients of 1 process of 8."""
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for name, params in CASES.items():
        res = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        m, (x1, x2) = _setup(**params)
        with torch.no_grad():
            m([x2, x1])
        loss = m([x1, x2])
        loss.backward()
        assert float(res["loss"].mean()) == pytest.approx(float(loss.detach()), rel=1e-9), name
        ref = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        assert ref.keys() == res["grads"].keys()
        for k, g in ref.items():
            torch.testing.assert_close(res["grads"][k], g, rtol=1e-7, atol=1e-10, msg=f"{name} {k}")
