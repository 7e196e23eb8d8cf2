"""MMCR: the loss against the authors' and lightly's computations re-done by hand in float64 numpy, its defining
property (orthogonal centroids of agreeing views beat collapsed ones; disagreeing views shrink the centroids), the
momentum encoder (stop-gradient, EMA, centroids of both networks), multi-view input, and two DDP processes against
one."""
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.config import load_config
from selfsup.distributed import convert_sync_batchnorm
from selfsup.methods import build_method
from selfsup.methods.base import cosine_momentum
from selfsup.methods.mmcr import mmcr_loss

from .helpers import leave_worker


def _randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _nuc(m):
    return np.linalg.svd(m, compute_uv=False).sum()


def _mmcr(seed=0, **params):
    cfg = load_config({"model": {"widths": [4, 8], "pool": 1},
                       "method": {"name": "mmcr", "proj_hidden": 16, "proj_dim": 8, **params}})
    torch.manual_seed(seed)
    return build_method(cfg, 1).double()


# --------------------------------------------------------------------------------------------- the loss by hand
@pytest.mark.parametrize("momentum", [False, True])
def test_mmcr_loss_matches_the_authors_by_hand(momentum):
    """mmcr/cifar_stl/loss_mmcr.py:19-46 (no momentum) and mmcr/imagenet/loss_mmcr_momentum.py:22-71, one process:
    −‖C‖_* + λ·Σ_i ‖Z_i‖_*/N, Z_i the online views only, c_i averaging both networks."""
    z, z_m = _randn(0, 5, 3, 4), _randn(1, 5, 3, 4)  # 5 images, 3 views, d = 4
    zn, zmn = _unit(z.numpy()), _unit(z_m.numpy())
    c = zn.mean(1)
    if momentum:
        c = (c + zmn.mean(1)) / 2
    ref = -_nuc(c) + 0.3 * sum(_nuc(zn[i]) for i in range(5)) / 5
    assert float(mmcr_loss(z, z_m if momentum else None, 0.3)) == pytest.approx(ref, rel=1e-10)
    assert float(mmcr_loss(z, z_m if momentum else None, 0.0)) == pytest.approx(-_nuc(c), rel=1e-10)


def test_mmcr_centroid_term_matches_lightly_mmcrloss_by_hand():
    """lightly MMCRLoss.forward (mmcr_loss.py:62-73) on normalised inputs: z = [online, momentum] along the views,
    c = mean over all of them, loss = −Σσ(c) + λ·Σ_i Σσ(z_i)/B. Its centroids are ours (λ = 0: equal); its
    per-image term spans both networks' views, ours (the authors') the online views (recorded, not followed)."""
    z, z_m = _randn(2, 6, 2, 5), _randn(3, 6, 2, 5)
    both = np.concatenate([_unit(z.numpy()), _unit(z_m.numpy())], 1)  # (B, 2k, d)
    c = both.mean(1)
    lightly = {lm: -_nuc(c) + lm * sum(_nuc(both[i]) for i in range(6)) / 6 for lm in (0.0, 5e-3)}
    assert float(mmcr_loss(z, z_m, 0.0)) == pytest.approx(lightly[0.0], rel=1e-10)
    assert float(mmcr_loss(z, z_m, 5e-3)) != pytest.approx(lightly[5e-3], rel=1e-9)


def test_inputs_are_normalised_and_momentum_views_get_no_gradient():
    z, z_m = _randn(4, 4, 2, 3).requires_grad_(), _randn(5, 4, 2, 3).requires_grad_()
    scaled = z.detach() * torch.tensor([2.0, 0.5, 3.0, 1.0], dtype=torch.float64)[:, None, None]
    assert float(mmcr_loss(scaled, z_m, 0.1)) == pytest.approx(float(mmcr_loss(z.detach(), z_m, 0.1)), rel=1e-12)
    mmcr_loss(z, z_m, 0.1).backward()
    assert z_m.grad is None and z.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ defining property
def test_orthogonal_agreeing_centroids_beat_collapsed_or_disagreeing_ones():
    """N unit centroids: ‖C‖_* ≤ N, reached by orthonormal ones; collapsed (all equal) ones give √N. k identical unit
    views: ‖Z_i‖_* = √k. Views that disagree shorten their centroid and lower ‖C‖_*."""
    n, k, d = 4, 3, 6
    eye = torch.eye(d, dtype=torch.float64)[:n]
    ortho = eye[:, None].expand(n, k, d)
    assert float(mmcr_loss(ortho, None, 0.1)) == pytest.approx(-n + 0.1 * math.sqrt(k), rel=1e-12)
    collapsed = eye[:1, None].expand(n, k, d)
    assert float(mmcr_loss(collapsed, None, 0.1)) == pytest.approx(-math.sqrt(n) + 0.1 * math.sqrt(k), rel=1e-12)
    spread = ortho + 0.8 * _randn(6, n, k, d)
    assert float(mmcr_loss(spread, None, 0.0)) > float(mmcr_loss(ortho, None, 0.0)) + 0.1
    # gradient descent from random embeddings reaches the bound: the centroids go orthonormal
    free = _randn(7, n, k, d).requires_grad_()
    for _ in range(300):
        free.grad = None
        mmcr_loss(free, None, 0.0).backward()
        with torch.no_grad():
            free -= 1.0 * free.grad
    assert float(mmcr_loss(free.detach(), None, 0.0)) == pytest.approx(-n, abs=1e-4)
    c = torch.nn.functional.normalize(free.detach(), dim=-1).mean(1)
    torch.testing.assert_close(c @ c.T, torch.eye(n, dtype=torch.float64), atol=1e-2, rtol=0)


# --------------------------------------------------------------------------------------------------- the module
def _views(n=6, k=2, seed=1, side=12):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, side, side, generator=g, dtype=torch.float64) for _ in range(k)]


def test_momentum_encoder_centroids_stop_gradient_and_ema():
    m = _mmcr(base_momentum=0.9)
    x = _views()
    with torch.no_grad():  # at the start the momentum encoder is the online one: the centroids are the online ones
        z = torch.stack(m.encode_joint(x, m.projector), 1)
        assert float(m(x)) == pytest.approx(float(mmcr_loss(z, None, m.params.lmbda)), rel=1e-10)
    m(x).backward()
    assert all(p.grad is None for p in m.target.parameters())
    assert all(p.grad is not None for p in [*m.backbone.parameters(), *m.projector.parameters()])
    with torch.no_grad():
        for p in m.projector.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.target.parameters()]
    m.on_step(0.5)
    mom = cosine_momentum(0.9, 0.5)
    for tb, ta, s in zip(before, m.target.parameters(), torch.nn.Sequential(m.backbone, m.projector).parameters()):
        torch.testing.assert_close(ta, mom * tb + (1 - mom) * s)
    with torch.no_grad():  # now the two networks differ: c_i = ½(online centroid + momentum centroid)
        z = torch.stack(m.encode_joint(x, m.projector), 1)
        z_m = torch.stack(m.momentum_views(x), 1)
        assert float(m(x)) == pytest.approx(float(mmcr_loss(z, z_m, m.params.lmbda)), rel=1e-10)
        assert float(m(x)) != pytest.approx(float(mmcr_loss(z, None, m.params.lmbda)), rel=1e-6)
    assert any(k.startswith("target.") for k in m.state_dict())
    plain = _mmcr(momentum_encoder=False)
    assert plain.target is None and not any(k.startswith("target.") for k in plain.state_dict())
    plain.on_step(0.5)


def test_more_views_through_local_crops():
    m = _mmcr()
    views = _views() + [torch.rand(6, 1, 8, 8, dtype=torch.float64) for _ in range(3)]
    with torch.no_grad():
        z = torch.stack(m.encode_joint(views, m.projector), 1)
        assert z.shape == (6, 5, 8)
        assert float(m(views)) == pytest.approx(float(mmcr_loss(z, z, m.params.lmbda)), rel=1e-10)
    cfg = load_config({"method": {"name": "mmcr"}, "augment": {"local_crops": 2, "local_size": 10}})
    assert cfg.augment.local_crops == 2
    assert load_config("configs/mmcr_fmnist.yaml").method["name"] == "mmcr"


# ---------------------------------------------------------------------------------------------------------- DDP
BATCH = 8
CASES = {"momentum": {}, "plain": {"momentum_encoder": False, "lmbda": 0.1}}


def _setup(**params):
    m = _mmcr(**params)
    g = torch.Generator().manual_seed(1)
    return m, [torch.rand(BATCH, 1, 12, 12, generator=g, dtype=torch.float64) for _ in range(2)]


def _ddp_worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    for name, params in CASES.items():
        m, (x1, x2) = _setup(**params)
        m = convert_sync_batchnorm(m, torch.device("cpu"))
        ddp = torch.nn.parallel.DistributedDataParallel(m, static_graph=True)
        sl = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        loss = ddp([x1[sl], x2[sl]])
        loss.backward()
        losses = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(losses, loss.detach().view(1))
        if rank == 0:
            grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
            torch.save({"loss": torch.cat(losses), "grads": grads}, f"{out}/{name}.pt")
        del ddp, loss, m
    leave_worker()


@pytest.mark.slow
def test_two_ddp_processes_match_one_process(tmp_path):
    """The centroids gathered with their gradients (and global BatchNorm) make 2 ranks of 4 images give the loss
    and gradients of 1 process of 8."""
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for name, params in CASES.items():
        res = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        m, (x1, x2) = _setup(**params)
        loss = m([x1, x2])
        loss.backward()
        assert float(res["loss"].mean()) == pytest.approx(float(loss.detach()), rel=1e-9), name
        ref = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        assert ref.keys() == res["grads"].keys()
        for k, g in ref.items():
            torch.testing.assert_close(res["grads"][k], g, rtol=1e-7, atol=1e-10, msg=f"{name} {k}")
