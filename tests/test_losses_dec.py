"""DEC soft assignment, target distribution and KL against hand numbers and torch's kl_div."""

import math

import pytest
import torch
import torch.nn.functional as F

from usclf.errors import UsclfError
from usclf.losses.dec import dec_kl, dec_target, student_t_q

D = torch.float64


def test_q_hand_values_and_rows_sum_to_one():
    # alpha = 1: q_ij ∝ 1 / (1 + d_ij^2)
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]], dtype=D)
    centers = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=D)
    q = student_t_q(z, centers)
    # row 0: d^2 = (0, 4) -> (1, 1/5) -> (5/6, 1/6); row 1: d^2 = (2, 2) -> (1/2, 1/2);
    # row 2: d^2 = (9, 1) -> (1/10, 1/2) -> (1/6, 5/6)
    expected = torch.tensor([[5 / 6, 1 / 6], [0.5, 0.5], [1 / 6, 5 / 6]], dtype=D)
    torch.testing.assert_close(q, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(q.sum(1), torch.ones(3, dtype=D))


def test_q_other_alpha():
    z = torch.tensor([[0.0]], dtype=D)
    centers = torch.tensor([[1.0], [2.0]], dtype=D)
    q = student_t_q(z, centers, alpha=3.0)
    a = (1 + 1 / 3) ** -2.0
    b = (1 + 4 / 3) ** -2.0
    assert q[0, 0].item() == pytest.approx(a / (a + b), abs=1e-12)


def test_q_gradient_finite_at_zero_distance():
    z = torch.tensor([[1.0, 2.0]], dtype=D, requires_grad=True)
    centers = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=D, requires_grad=True)
    q = student_t_q(z, centers)
    dec_kl(dec_target(q), q).backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(centers.grad).all()


def test_target_hand_values_sharpening_and_no_grad():
    q = torch.tensor([[0.6, 0.4], [0.5, 0.5]], dtype=D, requires_grad=True)
    p = dec_target(q)
    f = (1.1, 0.9)
    w0 = (0.36 / f[0], 0.16 / f[1])
    w1 = (0.25 / f[0], 0.25 / f[1])
    assert p[0, 0].item() == pytest.approx(w0[0] / sum(w0), abs=1e-12)
    assert p[1, 1].item() == pytest.approx(w1[1] / sum(w1), abs=1e-12)
    assert not p.requires_grad
    torch.testing.assert_close(p.sum(1), torch.ones(2, dtype=D))
    # balanced clusters: the target is a sharpened q (squared then renormalised)
    qb = torch.tensor([[0.7, 0.3], [0.3, 0.7]], dtype=D)
    pb = dec_target(qb)
    assert pb[0, 0].item() == pytest.approx(0.49 / 0.58, abs=1e-12)
    assert pb[0, 0] > qb[0, 0] and pb[1, 1] > qb[1, 1]


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_kl_batchmean_equals_torch_and_differs_from_mean():
    g = torch.Generator().manual_seed(0)
    q = torch.softmax(torch.randn(5, 4, generator=g, dtype=D), 1)
    p = dec_target(q)
    ours = dec_kl(p, q)
    torch.testing.assert_close(ours, F.kl_div(q.log(), p, reduction="batchmean"))
    mean = F.kl_div(q.log(), p, reduction="mean")
    assert ours.item() == pytest.approx(4 * mean.item(), abs=1e-12)  # 'mean' also divides by K
    hand = sum(p[i, j].item() * math.log(p[i, j].item() / q[i, j].item()) for i in range(5) for j in range(4)) / 5
    assert ours.item() == pytest.approx(hand, abs=1e-12)


def test_kl_zero_target_entries_and_errors():
    p = torch.tensor([[1.0, 0.0]], dtype=D)
    q = torch.tensor([[0.5, 0.5]], dtype=D)
    assert dec_kl(p, q).item() == pytest.approx(math.log(2), abs=1e-12)
    with pytest.raises(UsclfError, match="same"):
        dec_kl(p, torch.ones(2, 2))
    with pytest.raises(UsclfError, match="N x D"):
        student_t_q(torch.zeros(3, 2), torch.zeros(2, 3))
