"""Each loss against a hand computation on tiny tensors and against its defining properties."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.methods.barlow_twins import barlow_twins_loss
from selfsup.methods.byol import byol_loss
from selfsup.methods.moco import info_nce
from selfsup.methods.simclr import nt_xent
from selfsup.methods.simsiam import simsiam_loss
from selfsup.methods.vicreg import covariance_term, variance_term, vicreg_loss, vicreg_terms


def nt_xent_reference(z1, z2, tau):
    """Literal transcription of ℓ_i = −log(exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ)) over the 2N views."""
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    losses = []
    for i in range(2 * n):
        j = i + n if i < n else i - n
        s = z @ z[i]
        denom = sum(math.exp(s[k] / tau) for k in range(2 * n) if k != i)
        losses.append(-(s[j] / tau) + math.log(denom))
    return float(np.mean(losses))


def test_nt_xent_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    got = float(nt_xent(z1, z2, 0.5))
    assert got == pytest.approx(nt_xent_reference(z1.numpy(), z2.numpy(), 0.5), rel=1e-5)


def test_nt_xent_two_orthogonal_pairs_closed_form():
    # views identical, the two pairs orthogonal: ℓ = −1/τ + log(e^{1/τ} + 2·e^0)
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    expected = -1 / tau + math.log(math.exp(1 / tau) + 2)
    assert float(nt_xent(z1, z1.clone(), tau)) == pytest.approx(expected, rel=1e-6)


def test_nt_xent_invariant_to_swapping_views_and_scale():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    a = nt_xent(z1, z2, 0.2)
    assert float(nt_xent(z2, z1, 0.2)) == pytest.approx(float(a), rel=1e-6)
    assert float(nt_xent(3 * z1, 0.5 * z2, 0.2)) == pytest.approx(float(a), rel=1e-5)


def test_info_nce_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    tau = 0.2
    expected = -1 / tau + math.log(math.exp(1 / tau) + math.exp(0) + math.exp(-1 / tau))
    assert float(info_nce(q, k, queue, tau)) == pytest.approx(expected, rel=1e-5)


def test_byol_loss_values_and_stop_gradient():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    z = torch.tensor([[3.0, 0.0], [1.0, 0.0]], requires_grad=True)
    loss = byol_loss(p, z)
    # pair 1: cos = 1 → 0; pair 2: cos = 0 → 2; mean = 1
    assert float(loss.detach()) == pytest.approx(1.0)
    loss.backward()
    assert z.grad is None or torch.all(z.grad == 0)
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_simsiam_loss_minimum_is_minus_one():
    z = torch.randn(5, 8)
    assert float(simsiam_loss(2 * z, z, z, 3 * z)) == pytest.approx(-1.0, abs=1e-6)
    assert float(simsiam_loss(-z, z, -z, z)) == pytest.approx(1.0, abs=1e-6)


def test_barlow_twins_zero_at_perfect_decorrelated_invariance():
    # columns of ±1 patterns: zero mean, unit variance, mutually orthogonal → C = I
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert float(barlow_twins_loss(z, z.clone(), 0.5)) == pytest.approx(0.0, abs=1e-6)


def test_barlow_twins_hand_computed():
    z1 = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    z2 = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])  # dim 2 equals dim 1
    # standardised columns; C = z1ᵀz2/4 = [[1, 1], [0, 0]] → on-diag (1−1)² + (1−0)² = 1; off-diag 1² + 0² = 1
    lam = 0.25
    assert float(barlow_twins_loss(z1, z2, lam, eps=0.0)) == pytest.approx(1 + lam * 1, rel=1e-5)


def test_vicreg_terms_separately():
    z1 = torch.tensor([[0.0, 2.0], [2.0, 0.0], [0.0, 0.0], [2.0, 2.0]])
    z2 = z1 + torch.tensor([1.0, 0.0])
    t = vicreg_terms(z1, z2)
    assert float(t["invariance"]) == pytest.approx(0.5)  # (1² + 0²) / 2 per sample
    var = z1.var(0)  # unbiased: 4/3 each
    v_expected = float(F.relu(1 - torch.sqrt(var + 1e-4)).mean())
    assert float(variance_term(z1)) == pytest.approx(v_expected)
    assert v_expected == 0.0  # std > 1 → no variance penalty
    assert float(covariance_term(z1)) == pytest.approx(0.0, abs=1e-7)  # the two columns are uncorrelated
    # collapsed embedding: variance term = 1 − sqrt(eps) per dim, covariance 0
    const = torch.ones(6, 3)
    assert float(variance_term(const)) == pytest.approx(1 - math.sqrt(1e-4), rel=1e-6)
    # perfectly correlated columns x, x: cov = [[v, v], [v, v]] → c = 2v²/D
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    v = float(x.var())
    assert float(covariance_term(torch.cat([x, x], 1))) == pytest.approx(2 * v * v / 2, rel=1e-6)
    total = vicreg_loss(z1, z2, 25, 25, 1)
    assert float(total) == pytest.approx(25 * 0.5 + 25 * float(t["variance"]) + float(t["covariance"]), rel=1e-6)


@pytest.mark.parametrize("loss_fn", [
    lambda a, b: nt_xent(a, b, 0.2),
    lambda a, b: barlow_twins_loss(a, b, 0.01),
    lambda a, b: vicreg_loss(a, b),
])
def test_gradients_match_finite_differences(loss_fn):
    torch.manual_seed(0)
    a = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    # losses compute in float32 internally; check direction of the analytic gradient with a float32 tolerance
    loss = loss_fn(a, b)
    loss.backward()
    eps = 1e-3
    i, j = 2, 1
    with torch.no_grad():
        ap = a.clone()
        ap[i, j] += eps
        am = a.clone()
        am[i, j] -= eps
        fd = (float(loss_fn(ap, b)) - float(loss_fn(am, b))) / (2 * eps)
    assert float(a.grad[i, j]) == pytest.approx(fd, rel=2e-2, abs=1e-3)
