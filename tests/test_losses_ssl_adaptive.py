"""FreeMatch SAT/SAF, distribution alignment and CAP thresholds/loss on hand-checkable numbers."""

import math

import pytest
import torch

from usclf.errors import UsclfError
from naive import bce, logit, naive_ce, sig  # noqa: F401
from usclf.losses.ssl_adaptive import (
    cap_onehead_unlabeled,
    cap_thresholds,
    dist_align,
    dist_align_multilabel,
    dist_align_update,
    ema_probs_pool,
    freematch_fairness,
    freematch_init,
    freematch_mask,
    freematch_thresholds,
    freematch_unlabeled,
    freematch_update,
)

D = torch.float64
INF = float("inf")


def t(x):
    return torch.tensor(x, dtype=D)


# ---------------------------------------------------------------- FreeMatch


def test_freematch_init_is_uniform():
    s = freematch_init(4)
    assert s["time_p"].item() == pytest.approx(0.25)
    assert torch.allclose(s["p_model"], torch.full((4,), 0.25))
    assert torch.allclose(s["label_hist"], torch.full((4,), 0.25))
    with pytest.raises(UsclfError, match="at least 2"):
        freematch_init(1)


def test_freematch_update_and_thresholds_by_hand():
    q = t([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    s0 = freematch_init(3)
    s = freematch_update(s0, q, momentum=0.5)  # the init state is float32: compare to 1e-7
    # time_p = 0.5/3 + 0.5 * mean(0.7, 0.8, 0.4) = (1 + 1.9) / 6 = 2.9/6
    assert s["time_p"].item() == pytest.approx(2.9 / 6, abs=1e-7)
    # p_model = 0.5/3 + 0.5 * (1.1, 1.3, 0.6)/3 = (2.1, 2.3, 1.6)/6
    assert torch.allclose(s["p_model"], t([2.1, 2.3, 1.6]) / 6, atol=1e-7)
    # argmax (0, 1, 2): histogram (1, 1, 1)/3 -> label_hist stays 1/3
    assert torch.allclose(s["label_hist"], torch.full((3,), 1 / 3, dtype=D), atol=1e-7)
    # tau(c) = time_p * p_model / max p_model = 2.9/6 * (2.1/2.3, 1, 1.6/2.3)
    assert torch.allclose(freematch_thresholds(s), 2.9 / 6 * t([2.1 / 2.3, 1.0, 1.6 / 2.3]), atol=1e-7)
    # pure: the old state is untouched
    assert s0["time_p"].item() == pytest.approx(1 / 3) and torch.allclose(s0["p_model"], torch.full((3,), 1 / 3))


def test_freematch_mask_3x3_with_tie():
    state = {"time_p": t(0.6), "p_model": t([0.5, 0.25, 0.25]), "label_hist": t([1 / 3] * 3)}
    # thresholds 0.6 * (1, 0.5, 0.5) = (0.6, 0.3, 0.3)
    q = t([[0.55, 0.3, 0.15],  # class 0: 0.55 < 0.6 -> dropped
           [0.6, 0.3, 0.1],  # class 0: 0.6 == 0.6 -> kept (>=, USB max_probs.ge)
           [0.2, 0.3, 0.5]])  # class 2: 0.5 >= 0.3 -> kept
    assert freematch_mask(state, q).tolist() == [False, True, True]


def test_freematch_unlabeled_updates_before_masking():
    probs = [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.4, 0.35, 0.25]]
    weak = t(probs).log()  # softmax(log p) = p
    strong = t([[0.5, -0.2, 0.1], [0.0, 1.0, -1.0], [2.0, 0.3, 0.3]]).requires_grad_()
    weak.requires_grad_()
    loss, info, s = freematch_unlabeled(weak, strong, freematch_init(3), momentum=0.0)
    # momentum 0: time_p = mean max = 2.1/3 = 0.7, p_model = (2.1, 0.5, 0.4)/3, tau = 0.7 * p/0.7 = p_model
    assert torch.allclose(info["thresholds"], t([2.1, 0.5, 0.4]) / 3, atol=1e-12)
    # row 2: class 0 with 0.4 < 0.7 -> dropped (with the init state, 0.4 >= 1/3 would have kept it)
    assert info["mask"].tolist() == [True, True, False]
    assert info["pseudo"].tolist() == [0, 0, 0]
    assert info["mask_rate"].item() == pytest.approx(2 / 3)
    assert torch.allclose(s["label_hist"], t([1.0, 0.0, 0.0]))
    rows = strong.detach().tolist()
    expected = (naive_ce(rows[0], 0) + naive_ce(rows[1], 0) + 0.0) / 3  # mean over ALL 3 rows
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    assert weak.grad is None  # pseudo-labels carry no gradient
    assert strong.grad[2].abs().sum() == 0 and strong.grad[0].abs().sum() > 0


def test_freematch_fairness_hand_value_and_empty_mask():
    state = {"time_p": t(0.5), "p_model": t([0.5, 0.3, 0.2]), "label_hist": t([0.5, 0.25, 0.25])}
    strong = t([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]]).log().requires_grad_()
    mask = torch.tensor([True, True, False])
    # a = SumNorm(p_model / label_hist) = SumNorm(1, 1.2, 0.8) = (1/3, 0.4, 0.8/3)
    # kept strong probs: argmax (0, 1) -> hist_s = (1/2, 1/2, 0), 1/hist_s = (2, 2, 0 [inf -> 0])
    # b = SumNorm(mean prob (0.4, 0.5, 0.1) * (2, 2, 0)) = (0.8, 1.0, 0)/1.8 = (4/9, 5/9, 0)
    expected = (1 / 3) * math.log(4 / 9 + 1e-12) + 0.4 * math.log(5 / 9 + 1e-12) + (0.8 / 3) * math.log(1e-12)
    lf = freematch_fairness(strong, mask, state)
    assert lf.item() == pytest.approx(expected, abs=1e-9)
    lf.backward()
    assert strong.grad[2].abs().sum() == 0 and strong.grad[:2].abs().sum() > 0
    zero = freematch_fairness(strong, torch.zeros(3, dtype=torch.bool), state)
    assert zero.item() == 0.0 and zero.requires_grad


def test_freematch_bad_input_raises_one_line():
    s = freematch_init(3)
    bad = [
        lambda: freematch_update(s, torch.rand(4, 2)),  # K mismatch with the state
        lambda: freematch_update(s, torch.rand(4, 3), momentum=1.5),
        lambda: freematch_mask(s, torch.rand(3)),  # 1-D
        lambda: freematch_unlabeled(torch.rand(4, 3), torch.rand(5, 3), s),
        lambda: freematch_unlabeled(torch.rand(0, 3), torch.rand(0, 3), s),
        lambda: freematch_unlabeled(torch.rand(4, 3), torch.rand(4, 3), {"time_p": 1}),
        lambda: freematch_update({**s, "time_p": 0.3}, torch.rand(4, 3)),  # time_p not a tensor
        lambda: freematch_fairness(torch.rand(4, 3), torch.ones(3, dtype=torch.bool), s),
    ]
    for f in bad:
        with pytest.raises(UsclfError) as e:
            f()
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------- distribution alignment


def test_dist_align_known_values_rows_sum_to_one():
    probs = t([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    before = probs.clone()
    p_model, p_target = t([0.5, 0.25, 0.25]), t([1 / 3] * 3)
    out = dist_align(probs, p_model, p_target)
    # target/model = (2/3, 4/3, 4/3): row 0 -> (1/3, 0.4, 0.8/3), sum 1;
    # row 1 -> (0.4/3, 0.8/3, 0.8) / 1.2 = (1/9, 2/9, 2/3); atol 1e-5 for USB's +1e-6
    assert torch.allclose(out, t([[1 / 3, 0.4, 0.8 / 3], [1 / 9, 2 / 9, 2 / 3]]), atol=1e-5)
    assert torch.allclose(out.sum(1), torch.ones(2, dtype=D), atol=1e-12)
    assert torch.equal(probs, before)
    # a zero in p_model stays finite (USB's +1e-6), and half inputs come back as float32
    assert torch.isfinite(dist_align(probs, t([0.0, 0.5, 0.5]), p_target)).all()
    assert dist_align(probs.half(), p_model, p_target).dtype == torch.float32


def test_dist_align_update():
    probs = t([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    assert torch.allclose(dist_align_update(None, probs), t([0.35, 0.25, 0.4]))  # first call: batch mean
    # 0.5 * (0.5, 0.25, 0.25) + 0.5 * (0.35, 0.25, 0.4) = (0.425, 0.25, 0.325)
    assert torch.allclose(dist_align_update(t([0.5, 0.25, 0.25]), probs, momentum=0.5), t([0.425, 0.25, 0.325]))


def test_dist_align_multilabel_odds_and_fixed_point():
    probs = t([[0.5, 0.8, 0.5], [0.0, 1.0, 0.3]])
    p_model, p_target = t([0.5, 0.2, 0.5]), t([0.2, 0.5, 0.9])
    out = dist_align_multilabel(probs, p_model, p_target)
    # col 0: r = (0.2/0.8)/(0.5/0.5) = 1/4, odds 1 -> 1/4 -> p 0.2; col 1: r = 1/(0.25) = 4, odds 4 -> 16 -> 16/17
    # col 2: r = 9, odds 1 -> 9 -> 0.9; row 1: 0 and 1 stay; 0.3 -> odds 3/7 * 9 = 27/7 -> 27/34
    assert torch.allclose(out, t([[0.2, 16 / 17, 0.9], [0.0, 1.0, 27 / 34]]), atol=1e-12)
    same = dist_align_multilabel(probs, p_target, p_target)  # model == target: nothing changes
    assert torch.allclose(same, probs, atol=1e-15)
    assert torch.isfinite(dist_align_multilabel(probs, t([0.0, 1.0, 0.5]), p_target)).all()  # clamped
    with pytest.raises(UsclfError, match="length 3"):
        dist_align_multilabel(probs, t([0.5, 0.5]), p_target)
    with pytest.raises(UsclfError, match="length 3"):
        dist_align(probs, p_model, t([0.5]))


# ---------------------------------------------------------------- CAP


def test_ema_probs_pool_fifo():
    a, b = t([[0.1, 0.2], [0.3, 0.4]]), t([[0.5, 0.6], [0.7, 0.8]])
    p = ema_probs_pool(None, a, max_rows=3)
    assert torch.equal(p, a)
    p = ema_probs_pool(p, b.requires_grad_(), max_rows=3)
    assert torch.equal(p, t([[0.3, 0.4], [0.5, 0.6], [0.7, 0.8]])) and not p.requires_grad  # oldest row dropped
    with pytest.raises(UsclfError, match="pool has 2 columns, probs have 3"):
        ema_probs_pool(p, torch.rand(2, 3), 3)
    with pytest.raises(UsclfError, match="max_rows"):
        ema_probs_pool(None, a, 0)


# N = 5 rows; columns: ordinary, prior 0, prior 1, ties
SCORES = t([[0.9, 0.5, 0.3, 0.6],
            [0.8, 0.6, 0.1, 0.6],
            [0.7, 0.7, 0.2, 0.3],
            [0.2, 0.8, 0.05, 0.2],
            [0.1, 0.95, 0.4, 0.1]])
PRIOR = t([0.4, 0.0, 1.0, 0.2])


def test_cap_thresholds_by_hand():
    tau_pos, tau_neg = cap_thresholds(SCORES, PRIOR, neg_per=1.0)
    # col 0: k_pos = 0.4*5 = 2 -> 2nd largest 0.8; k_neg = 0.6*5 = 3 -> 3rd smallest 0.7
    # col 1 (prior 0): no positive -> +inf; k_neg = 5 -> largest 0.95 (all negative)
    # col 2 (prior 1): k_pos = 5 -> smallest 0.05 (all positive); no negative -> -inf
    # col 3 (ties): k_pos = 1 -> largest 0.6 (taken by both tied rows); k_neg = 4 -> 4th smallest 0.6
    assert tau_pos.tolist() == [0.8, INF, 0.05, 0.6]
    assert tau_neg.tolist() == [0.7, 0.95, -INF, 0.6]
    # official default neg_per 0.998: col 0 k_neg = floor(2.994) = 2 -> 0.2 (0.7 is left unassigned)
    _, tau_neg_default = cap_thresholds(SCORES, PRIOR)
    assert tau_neg_default[0].item() == 0.2
    # positive share equals the prior, except ties (col 3: 2/5 >= 1/5)
    assert (SCORES >= tau_pos).double().mean(0).tolist() == [0.4, 0.0, 1.0, 0.4]


def test_cap_thresholds_count_rounding():
    scores = (torch.arange(100, dtype=D) / 100).unsqueeze(1)  # 0.00 .. 0.99
    # 0.29 * 100 = 28.999999999999996 in float64 and 0.2899999917 in float32: still 29 -> 29th largest = 0.71
    for prior in (t([0.29]), torch.tensor([0.29])):
        tau_pos, _ = cap_thresholds(scores, prior)
        assert tau_pos.item() == pytest.approx(0.71)


def test_cap_onehead_loss_against_naive_loop():
    weak_p = [[0.8, 0.65, 0.1], [0.5, 0.55, 0.9], [0.2, 0.6, 0.3]]
    weak = t([[logit(p) for p in row] for row in weak_p]).requires_grad_()
    strong = t([[0.3, -1.0, 2.0], [1.5, 0.2, -0.3], [-0.5, 0.7, 1.1]]).requires_grad_()
    p = torch.sigmoid(weak.detach())
    tie = p[2, 1].item()  # col 1: tau_pos == tau_neg == p[2, 1] -> positive wins the tie
    tau_pos, tau_neg = t([0.7, tie, INF]), t([0.3, tie, 0.2])
    loss, info = cap_onehead_unlabeled(weak, strong, tau_pos, tau_neg)
    assert info["pseudo"].tolist() == [[1, 1, 0], [-1, 0, -1], [0, 1, -1]]
    assert info["mask"].tolist() == [[True, True, True], [False, True, False], [True, True, False]]
    assert info["mask_rate"].item() == pytest.approx(6 / 9)
    total = 0.0
    for i in range(3):
        for c in range(3):
            pi = p[i, c].item()
            if pi >= tau_pos[c].item():
                total += bce(1, sig(strong[i, c].item()))
            elif pi <= tau_neg[c].item():
                total += bce(0, sig(strong[i, c].item()))
    assert loss.item() == pytest.approx(total / 9, abs=1e-12)  # "mean": sum over assigned / all N*C entries
    loss_sum, _ = cap_onehead_unlabeled(weak, strong, tau_pos, tau_neg, reduction="sum")
    assert loss_sum.item() == pytest.approx(total, abs=1e-12)  # CAP's own reduction
    loss.backward()
    assert weak.grad is None
    ignored = ~info["mask"]
    assert strong.grad[ignored].abs().sum() == 0 and strong.grad[info["mask"]].abs().min() > 0


def test_losses_run_in_float32_under_autocast():
    weak, strong = torch.randn(4, 3), torch.randn(4, 3)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        taus = torch.full((3,), 0.6), torch.full((3,), 0.4)
        l_cap, _ = cap_onehead_unlabeled(weak.bfloat16(), strong.bfloat16(), *taus)
        l_fm, _, s = freematch_unlabeled(weak.bfloat16(), strong.bfloat16(), freematch_init(3))
    assert l_cap.dtype == l_fm.dtype == s["p_model"].dtype == torch.float32


def test_cap_bad_input_raises_one_line():
    good = torch.rand(4, 3)
    bad = [
        lambda: cap_thresholds(good, torch.rand(2)),
        lambda: cap_thresholds(good, torch.tensor([0.1, 1.2, 0.3])),
        lambda: cap_thresholds(torch.rand(0, 3), torch.rand(3)),
        lambda: cap_thresholds(good, torch.rand(3), neg_per=2.0),
        lambda: cap_onehead_unlabeled(good, torch.rand(4, 2), torch.rand(3), torch.rand(3)),
        lambda: cap_onehead_unlabeled(good, good, torch.rand(2), torch.rand(3)),
        lambda: cap_onehead_unlabeled(good, good, torch.rand(3), torch.rand(3), reduction="none"),
        lambda: cap_onehead_unlabeled(good[0], good[0], torch.rand(3), torch.rand(3)),
    ]
    for f in bad:
        with pytest.raises(UsclfError) as e:
            f()
        assert "\n" not in str(e.value)
