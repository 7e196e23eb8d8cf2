"""MoCo: queue size against the global batch, shuffled BatchNorm of the key encoder (per-group statistics,
deterministic and resumable permutations). VICReg: the loss against the authors' reference code, by hand."""
import copy
import math
import subprocess
import sys

import numpy as np
import pytest

from selfsup.methods import method_params
import torch
import torch.nn.functional as F

from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.methods.moco import MoCo, MoCoParams
from selfsup.methods.vicreg import vicreg_loss, vicreg_terms
from selfsup.models.backbones import SmallCNN


def _moco(groups: int, queue_size: int = 64) -> MoCo:
    torch.manual_seed(0)
    backbone = SmallCNN(1, widths=(4, 8), convs_per_stage=1, pool=1)
    m = MoCo(backbone, MoCoParams(proj_hidden=16, proj_dim=8, queue_size=queue_size, shuffle_bn_groups=groups))
    return m.double().train()


def _views(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 10, 10, generator=g, dtype=torch.float64) for _ in range(2)]


def _step_keys(m: MoCo, views) -> tuple[torch.Tensor, torch.Tensor]:
    """One training forward; the (normalised) keys it enqueued for each view."""
    n, ptr = len(views[0]), int(m.queue_ptr)
    m([v.clone() for v in views])
    q = m.queue[(ptr + torch.arange(2 * n)) % len(m.queue)].clone()
    return q[:n], q[n:]


def _manual_shuffled_keys(enc, x, perm, groups):
    out = torch.empty(len(x), enc[1][-1].out_features, dtype=x.dtype)
    for idx in perm.tensor_split(groups):
        out[idx] = enc(x[idx])
    return F.normalize(out, dim=1)


# ---------------------------------------------------------------- MoCo: queue size against the global batch

def test_config_rejects_queue_smaller_than_two_batches():
    ok = load_config(None, ["method.name=moco", "method.queue_size=64", "train.batch_size=32"])  # 2 x 32 = 64
    assert method_params(ok).queue_size == 64
    with pytest.raises(ConfigError) as e:
        load_config(None, ["method.name=moco", "method.queue_size=63", "train.batch_size=32"])
    msg = str(e.value)
    assert msg.startswith("config error: method.queue_size: 63 ") and "2 x train.batch_size = 64" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="method.queue_size: 4096 .*train.batch_size = 8192"):  # default queue
        load_config(None, ["method.name=moco", "train.batch_size=4096"])
    load_config(None, ["method.name=simclr", "train.batch_size=4096"])  # other methods have no queue


def test_cli_rejects_queue_smaller_than_two_batches():
    r = subprocess.run([sys.executable, "-m", "selfsup.cli", "pretrain", "--config", "configs/moco_fmnist.yaml",
                        "train.batch_size=4096"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "method.queue_size" in lines[0] and "train.batch_size" in lines[0]


def test_queue_exactly_two_batches_is_filled_and_wraps():
    n = 4
    m = _moco(groups=0, queue_size=2 * n)
    for step in range(2):
        x1, x2 = _views(n, seed=step)
        with torch.no_grad():
            expected = F.normalize(torch.cat([m.key_encoder(x1), m.key_encoder(x2)]), dim=1)
        m([x1, x2])
        torch.testing.assert_close(m.queue, expected)  # the whole queue is this step's keys, in order
        assert int(m.queue_ptr) == 0


# ---------------------------------------------------------------- MoCo: shuffled BatchNorm

def test_shuffled_keys_equal_manual_group_computation():
    n, groups = 8, 2
    m = _moco(groups)
    x1, x2 = _views(n)
    enc = copy.deepcopy(m.key_encoder)
    g = torch.Generator().manual_seed(0)  # step 0
    p1, p2 = torch.randperm(n, generator=g), torch.randperm(n, generator=g)
    with torch.no_grad():
        e1 = _manual_shuffled_keys(enc, x1, p1, groups)
        e2 = _manual_shuffled_keys(enc, x2, p2, groups)
        unshuffled = F.normalize(enc(x1), dim=1)
    k1, k2 = _step_keys(m, [x1, x2])
    torch.testing.assert_close(k1, e1)
    torch.testing.assert_close(k2, e2)
    assert (k1 - unshuffled).abs().max() > 1e-3  # full-batch statistics give other keys
    assert int(m.shuffle_step) == 1
    # the next step draws a new permutation
    g = torch.Generator().manual_seed(1)
    p1 = torch.randperm(n, generator=g)
    with torch.no_grad():
        e1 = _manual_shuffled_keys(enc, x1, p1, groups)
    k1, _ = _step_keys(m, [x1, x2])
    torch.testing.assert_close(k1, e1)


def test_key_uses_statistics_of_its_own_group_only():
    n, groups = 8, 2
    m0 = _moco(groups)
    x1, x2 = _views(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # step 0, view 1
    i, same, other = int(perm[0]), int(perm[1]), int(perm[n // 2])
    base, _ = _step_keys(copy.deepcopy(m0), [x1, x2])

    def key_i_after_changing(j):
        y1 = x1.clone()
        y1[j] = 1 - y1[j]
        k1, _ = _step_keys(copy.deepcopy(m0), [y1, x2])
        return k1[i]

    torch.testing.assert_close(key_i_after_changing(other), base[i], rtol=1e-12, atol=1e-12)
    assert (key_i_after_changing(same) - base[i]).abs().max() > 1e-4


def test_too_small_groups_fall_back_to_fewer_groups():
    m = _moco(groups=4)
    x1, x2 = _views(5)  # 4 groups would hold one or two images: 2 groups of 3 and 2
    enc = copy.deepcopy(m.key_encoder)
    g = torch.Generator().manual_seed(0)
    p1 = torch.randperm(5, generator=g)
    with torch.no_grad():
        e1 = _manual_shuffled_keys(enc, x1, p1, 2)
    k1, _ = _step_keys(m, [x1, x2])
    torch.testing.assert_close(k1, e1)


def test_shuffle_is_resumable_from_the_state_dict_and_ignores_global_rng():
    n = 8
    m = _moco(groups=4)
    views = _views(n)
    m([v.clone() for v in views])  # step 0
    state = copy.deepcopy(m.state_dict())
    assert int(state["shuffle_step"]) == 1
    resumed = _moco(groups=4)
    resumed.load_state_dict(state)
    fresh = _moco(groups=4)
    fresh.load_state_dict({k: v for k, v in state.items() if k != "shuffle_step"}, strict=False)
    nxt = _views(n, seed=2)
    torch.manual_seed(123)
    loss = m([v.clone() for v in nxt])
    torch.manual_seed(456)
    loss_resumed = resumed([v.clone() for v in nxt])
    assert loss_resumed.item() == loss.item()
    torch.testing.assert_close(resumed.queue, m.queue, rtol=0, atol=0)
    # the step decides the permutation: the same weights at step 0 give another loss
    assert abs(fresh([v.clone() for v in nxt]).item() - loss.item()) > 1e-6


def test_eval_mode_and_groups_off_use_the_plain_key_encoder():
    x1, x2 = _views(8)
    for groups, train in ((0, True), (1, True), (4, False)):
        m = _moco(groups).train(train)
        with torch.no_grad():
            e1 = F.normalize(m.key_encoder(x1), dim=1)
        m([x1, x2])
        if train:
            torch.testing.assert_close(m.queue[:8], e1)
        assert int(m.shuffle_step) == 0
    assert _moco(4).key_encoder.local_batchnorm is True


# ---------------------------------------------------------------- VICReg against the reference code


def test_vicreg_loss_by_hand():
    """z1 = [[0,0],[1,0],[2,1]], z2 = [[0,0],[0,1],[0,0]] (n = 3, D = 2), ε = 1e-4.

    invariance: (z1 − z2)² = 0,0,1,1,4,1 → 7/6.
    variance: z1 columns have unbiased variances 1 and 1/3; z2 columns 0 and 1/3.
      v(z1) = (max(0, 1 − √1.0001) + 1 − √(1/3 + ε)) / 2,  v(z2) = (1 − √ε + 1 − √(1/3 + ε)) / 2,
      averaged over the two views as in main_vicreg.py.
    covariance: z1's cov_01 = ((−1)(−1/3) + 0·(−1/3) + 1·(2/3)) / 2 = 1/2 → c(z1) = 2·(1/2)²/2 = 1/4;
      z2 has a constant column → c(z2) = 0. Summed.
    """
    z1 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    eps = 1e-4
    inv = 7 / 6
    v1 = (max(0.0, 1 - math.sqrt(1 + eps)) + 1 - math.sqrt(1 / 3 + eps)) / 2
    v2 = (1 - math.sqrt(eps) + 1 - math.sqrt(1 / 3 + eps)) / 2
    var = (v1 + v2) / 2
    cov = 0.25
    t = vicreg_terms(z1, z2)
    assert float(t["invariance"]) == pytest.approx(inv, rel=1e-12)
    assert float(t["variance"]) == pytest.approx(var, rel=1e-12)
    assert float(t["covariance"]) == pytest.approx(cov, rel=1e-12)
    expected = 25 * inv + 25 * var + 1 * cov
    assert float(vicreg_loss(z1, z2)) == pytest.approx(expected, rel=1e-12)  # the default coefficients
    assert float(vicreg_loss(z1, z2, 2.0, 3.0, 5.0)) == pytest.approx(2 * inv + 3 * var + 5 * cov, rel=1e-12)


def test_vicreg_loss_matches_reference_code_in_numpy():
    """facebookresearch/vicreg main_vicreg.py, VICReg.forward, transcribed to numpy."""
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(16, 5)) * np.array([0.3, 0.8, 1.5, 0.5, 2.0])
    y0 = x0 + 0.4 * rng.normal(size=(16, 5))
    n, d = x0.shape
    repr_loss = np.mean((x0 - y0) ** 2)
    x, y = x0 - x0.mean(0), y0 - y0.mean(0)
    std_x, std_y = np.sqrt(x.var(0, ddof=1) + 0.0001), np.sqrt(y.var(0, ddof=1) + 0.0001)
    std_loss = np.mean(np.maximum(0, 1 - std_x)) / 2 + np.mean(np.maximum(0, 1 - std_y)) / 2
    cov_x, cov_y = x.T @ x / (n - 1), y.T @ y / (n - 1)
    off = ~np.eye(d, dtype=bool)
    cov_loss = (cov_x[off] ** 2).sum() / d + (cov_y[off] ** 2).sum() / d
    ref = 25.0 * repr_loss + 25.0 * std_loss + 1.0 * cov_loss
    assert std_loss > 0.05  # the variance term matters in this case
    got = vicreg_loss(torch.from_numpy(x0), torch.from_numpy(y0))
    assert float(got) == pytest.approx(ref, rel=1e-10)
