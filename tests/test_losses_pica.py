"""PICA and LSD losses against hand numbers and naive loop re-implementations."""

import math

import numpy as np
import pytest
import torch

from usclf.errors import UsclfError
from usclf.losses.dirichlet import dirichlet_prior_loss, lsd_loss
from usclf.losses.pica import cluster_size_entropy, pica_loss, pui_cross_entropy

D = torch.float64


def naive_pica(x, y, lam=2.0):
    """Eqs. 1-4 with explicit loops (works on python floats or on torch scalars for autograd)."""
    n, k = len(x), len(x[0])
    nx = [sum(x[i][a] ** 2 for i in range(n)) ** 0.5 for a in range(k)]
    ny = [sum(y[i][b] ** 2 for i in range(n)) ** 0.5 for b in range(k)]
    m = [[sum(x[i][a] * y[i][b] for i in range(n)) / (nx[a] * ny[b]) for b in range(k)] for a in range(k)]
    exp = torch.exp if isinstance(m[0][0], torch.Tensor) else math.exp
    log = torch.log if isinstance(m[0][0], torch.Tensor) else math.log
    ce = sum(-m[a][a] + log(sum(exp(m[a][b]) for b in range(k))) for a in range(k)) / k
    col = [sum(x[i][a] for i in range(n)) for a in range(k)]
    z = [c / sum(col) for c in col]
    ne = math.log(k) + sum(zk * log(zk) for zk in z)
    return ce + lam * ne, ce, ne


def rand_probs(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, k, generator=g, dtype=D) * 2, dim=1)


def test_identity_views_hand_value():
    # M = I: each row's CE is -1 + log(e + 1); Z is uniform so L_NE = 0
    x = torch.eye(2, dtype=D)
    total, parts = pica_loss(x, x.clone())
    assert parts["ce"].item() == pytest.approx(math.log(1 + math.e) - 1, abs=1e-12)
    assert parts["ne"].item() == pytest.approx(0.0, abs=1e-12)
    assert total.item() == pytest.approx(0.3132616875182228, abs=1e-12)


def test_2x2_closed_form():
    # y columns normalised: (0.6, 0.4)/s and (0.4, 0.6)/s with s = sqrt(0.52); each row's CE = log(1 + exp(-0.2/s))
    x = torch.eye(2, dtype=D)
    y = torch.tensor([[0.6, 0.4], [0.4, 0.6]], dtype=D)
    _, parts = pica_loss(x, y)
    assert parts["ce"].item() == pytest.approx(math.log(1 + math.exp(-0.2 / math.sqrt(0.52))), abs=1e-12)


def test_3x2_against_naive_loops():
    x = [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]
    y = [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]
    exp_total, exp_ce, exp_ne = naive_pica(x, y, lam=2.0)
    total, parts = pica_loss(torch.tensor(x, dtype=D), torch.tensor(y, dtype=D), lam=2.0)
    assert parts["ce"].item() == pytest.approx(exp_ce, abs=1e-12)
    assert parts["ne"].item() == pytest.approx(exp_ne, abs=1e-12)
    assert total.item() == pytest.approx(exp_total, abs=1e-12)
    # z = (1.8, 1.2) / 3: not uniform, so the balance term is switched on
    assert exp_ne == pytest.approx(math.log(2) + 0.6 * math.log(0.6) + 0.4 * math.log(0.4), abs=1e-12)


def test_gradient_matches_naive_autograd():
    x0, y0 = rand_probs(6, 3, 0), rand_probs(6, 3, 1)
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    pica_loss(x, y, lam=2.0)[0].backward()
    xn, yn = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    naive_pica(xn, yn, lam=2.0)[0].backward()
    torch.testing.assert_close(x.grad, xn.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(y.grad, yn.grad, rtol=1e-9, atol=1e-12)


def test_orientation_swapping_views_changes_gradient():
    x0, y0 = rand_probs(8, 3, 2), rand_probs(8, 3, 3)
    x = x0.clone().requires_grad_()
    pica_loss(x, y0)[0].backward()
    x_sw = x0.clone().requires_grad_()
    pica_loss(y0, x_sw)[0].backward()  # x in the second slot: rows of M from y, Z from y
    assert (x.grad - x_sw.grad).abs().max() > 1e-3
    # and the kept orientation is the naive one (rows of M from x, Z from x)
    xn = x0.clone().requires_grad_()
    naive_pica(xn, y0)[0].backward()
    torch.testing.assert_close(x.grad, xn.grad, rtol=1e-9, atol=1e-12)


def test_balance_term_depends_on_x_only():
    x, y = rand_probs(5, 4, 4).requires_grad_(), rand_probs(5, 4, 5).requires_grad_()
    pica_loss(x, y)[1]["ne"].backward()
    assert y.grad is None
    assert x.grad.abs().max() > 0


def test_uniform_z_gives_zero_ne_and_max_entropy():
    x = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7]], dtype=D)
    _, parts = pica_loss(x, rand_probs(3, 3, 6))
    assert parts["ne"].item() == pytest.approx(0.0, abs=1e-12)
    assert cluster_size_entropy(x).item() == pytest.approx(math.log(3), abs=1e-12)
    one_cluster = torch.tensor([[1.0, 0.0, 0.0]] * 4, dtype=D)
    assert cluster_size_entropy(one_cluster).item() == pytest.approx(0.0, abs=1e-12)
    _, p = pica_loss(one_cluster, one_cluster)
    assert p["ne"].item() == pytest.approx(math.log(3), abs=1e-12)  # empty clusters: finite, = log K


def test_autocast_keeps_float32_precision():
    x, y = rand_probs(16, 5, 7).float(), rand_probs(16, 5, 8).float()
    ref = pica_loss(x, y)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pica_loss(x, y)[0]
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) < 1e-6


def test_bad_inputs_raise_clear_errors():
    x = rand_probs(4, 3, 9)
    with pytest.raises(UsclfError, match="different shapes"):
        pica_loss(x, x[:, :2])
    with pytest.raises(UsclfError, match="at least 2 clusters"):
        pica_loss(x[:, :1], x[:, :1])
    with pytest.raises(UsclfError, match="empty batch"):
        pui_cross_entropy(x[:0], x[:0])
    with pytest.raises(UsclfError, match="2-D"):
        pica_loss(x[0], x[0])


# ---- LSD -------------------------------------------------------------------------------------------


def x_with_sizes(sizes):
    """N x K probabilities (rows of one-hot mixtures) whose column sums are proportional to sizes."""
    return torch.tensor([sizes, sizes], dtype=D) / sum(sizes)


def test_dirichlet_hand_value():
    # z = (0.25, 0.75), K = 2, alpha = 1.5: L_SD = -(0.5 / log 2) (log 0.25 + log 0.75)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], dtype=D)
    expected = -(0.5 / math.log(2)) * (math.log(0.25) + math.log(0.75))
    assert dirichlet_prior_loss(x, alpha=1.5).item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(1.2075187496394219, abs=1e-12)
    assert dirichlet_prior_loss(x, alpha=1.0).item() == 0.0


def test_lsd_total_is_ce_plus_lambda_sd():
    x, y = rand_probs(6, 4, 10), rand_probs(6, 4, 11)
    total, parts = lsd_loss(x, y, lam=3.0, alpha=1.2)
    assert parts["ce"].item() == pytest.approx(pui_cross_entropy(x, y).item(), abs=1e-12)
    assert parts["sd"].item() == pytest.approx(dirichlet_prior_loss(x, 1.2).item(), abs=1e-12)
    assert total.item() == pytest.approx(parts["ce"].item() + 3.0 * parts["sd"].item(), abs=1e-12)
    # same cross-entropy term as PICA: only the balance term differs
    assert parts["ce"].item() == pytest.approx(pica_loss(x, y)[1]["ce"].item(), abs=1e-12)


@pytest.mark.parametrize("alpha", [1.01, 1.5, 3.0])
def test_minimum_at_uniform_for_alpha_above_one(alpha):
    k = 5
    uniform = dirichlet_prior_loss(x_with_sizes([1.0] * k), alpha).item()
    assert uniform == pytest.approx((alpha - 1) * k, abs=1e-9)  # -(a-1)/log K * K * log(1/K)
    for z in np.random.default_rng(12).dirichlet(np.ones(k), size=200):
        assert dirichlet_prior_loss(x_with_sizes(z.tolist()), alpha).item() > uniform - 1e-12


def test_gradient_pushes_emptying_cluster_back():
    sizes = [0.02, 0.13, 0.35, 0.5]
    x = x_with_sizes(sizes).requires_grad_()
    dirichlet_prior_loss(x, alpha=1.01).backward()
    col_grad = x.grad.sum(0)
    # descent (-grad) grows the smallest cluster most and shrinks the largest
    assert torch.argmin(col_grad).item() == 0
    assert col_grad[0] < 0 < col_grad[3]
    z = torch.tensor(sizes, dtype=D).requires_grad_()
    (-(0.01 / math.log(4)) * torch.log(z).sum()).backward()
    assert torch.argmax(z.grad.abs()).item() == 0


def test_dirichlet_clamps_empty_cluster_and_validates():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=D, requires_grad=True)
    val = dirichlet_prior_loss(x, alpha=1.1, eps_clamp=1e-8)
    assert val.item() == pytest.approx(-(0.1 / math.log(2)) * math.log(1e-8), rel=1e-12)
    val.backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(UsclfError, match="alpha"):
        dirichlet_prior_loss(x, alpha=0.0)
    with pytest.raises(UsclfError, match="eps_clamp"):
        dirichlet_prior_loss(x, alpha=1.1, eps_clamp=0.6)
