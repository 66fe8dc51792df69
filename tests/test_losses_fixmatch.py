"""FixMatch one-/two-head losses and the supervised BCE on hand-made batches."""

import math

import pytest
import torch

from usclf.errors import UsclfError
from usclf.losses.fixmatch import (
    fixmatch_onehead_unlabeled,
    fixmatch_total,
    fixmatch_twohead_unlabeled,
    twohead_ml_unlabeled,
    twohead_labeled,
)
from usclf.losses.supervised import multilabel_bce
from naive import bce, logit, naive_ce, sig  # noqa: F401

D = torch.float64


TAU = sig(logit(0.95))  # exactly representable boundary: the weak row below reaches it to the last bit

WEAK_P = [
    [0.97, 0.2, 0.6],  # confident -> kept, pseudo (1, 0, 1)
    [0.9, 0.4, 0.1],  # max 0.9 < tau -> masked out
    [0.95, 0.5, 0.3],  # max == tau -> kept (>=); 0.5 -> pseudo 1 (>=)
    [0.1, 0.02, 0.01],  # all low: max 0.1 < tau -> masked out (a confident "absent" row is not kept)
]
STRONG = [[0.3, -1.0, 2.0], [1.5, 0.2, -0.3], [-0.5, 0.7, 1.1], [2.0, 2.0, 2.0]]


def weak_logits():
    return torch.tensor([[logit(p) for p in row] for row in WEAK_P], dtype=D)


def test_supervised_bce_hand_value():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]], dtype=D)
    targets = torch.tensor([[1, 0], [0, 1]])
    expected = (bce(1, 0.5) + bce(0, sig(2.0)) + bce(0, sig(-1.0)) + bce(1, sig(0.5))) / 4
    assert multilabel_bce(logits, targets).item() == pytest.approx(expected, abs=1e-12)
    with pytest.raises(UsclfError, match="N x C"):
        multilabel_bce(logits, targets[:, :1])


def test_onehead_mask_pseudo_and_mean_over_all_rows():
    loss, info = fixmatch_onehead_unlabeled(weak_logits(), torch.tensor(STRONG, dtype=D), tau=TAU)
    assert info["mask"].tolist() == [True, False, True, False]
    assert info["mask_rate"].item() == 0.5
    assert info["pseudo"].tolist() == [[1, 0, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]]
    kept = {0: [1, 0, 1], 2: [1, 1, 0]}
    row_loss = {i: sum(bce(y, sig(s)) for y, s in zip(ys, STRONG[i])) / 3 for i, ys in kept.items()}
    expected = (row_loss[0] + row_loss[2]) / 4  # divided by ALL 4 rows, masked rows count 0
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert loss.item() != pytest.approx((row_loss[0] + row_loss[2]) / 2)


def test_onehead_tau_boundary_is_inclusive():
    w = weak_logits()[2:3]
    s = torch.zeros(1, 3, dtype=D)
    assert fixmatch_onehead_unlabeled(w, s, tau=TAU)[1]["mask"].item() is True
    assert fixmatch_onehead_unlabeled(w, s, tau=math.nextafter(TAU, 1.0))[1]["mask"].item() is False


def test_onehead_no_gradient_through_weak_view():
    # weak and strong from one forward pass (as the trainer does): only strong, kept rows get gradient
    both = torch.cat([weak_logits(), torch.tensor(STRONG, dtype=D)]).requires_grad_()
    loss, _ = fixmatch_onehead_unlabeled(both[:4], both[4:], tau=TAU)
    loss.backward()
    assert torch.all(both.grad[:4] == 0)
    strong_grad = both.grad[4:]
    assert torch.all(strong_grad[[1, 3]] == 0)
    assert torch.all(strong_grad[[0, 2]] != 0)
    # d/ds of mean BCE with logits = (sigmoid(s) - y) / (C * N)
    assert strong_grad[0, 0].item() == pytest.approx((sig(0.3) - 1) / 12, abs=1e-12)


def test_onehead_nothing_confident_gives_zero_loss():
    loss, info = fixmatch_onehead_unlabeled(torch.zeros(3, 2), torch.randn(3, 2), tau=0.95)
    assert loss.item() == 0.0 and info["mask_rate"].item() == 0.0


def test_twohead_unlabeled_standard_fixmatch():
    probs = [[0.96, 0.02, 0.02], [0.5, 0.3, 0.2], [0.01, 0.01, 0.98]]
    weak = torch.log(torch.tensor(probs, dtype=D))  # softmax(log p) = p
    strong = torch.tensor([[0.1, 0.2, 0.3], [1.0, 0.0, 0.0], [0.5, -0.5, 2.0]], dtype=D, requires_grad=True)
    loss, info = fixmatch_twohead_unlabeled(weak, strong, tau=0.95)
    assert info["pseudo"].tolist() == [0, 0, 2]
    assert info["mask"].tolist() == [True, False, True]
    assert info["mask_rate"].item() == pytest.approx(2 / 3)
    expected = (naive_ce([0.1, 0.2, 0.3], 0) + naive_ce([0.5, -0.5, 2.0], 2)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    assert torch.all(strong.grad[1] == 0)


def test_twohead_ml_pseudo_labels_reach_the_sigmoid_head():
    weak = torch.log(torch.tensor([[0.96, 0.04], [0.5, 0.5]], dtype=D))  # row 0 accepted (set 0), row 1 not
    combo_strong = torch.zeros(2, 2, dtype=D)                            # CE = log 2 per row
    ml_strong = torch.tensor([[0.0, 0.0], [3.0, -3.0]], dtype=D, requires_grad=True)
    vocab = torch.tensor([[1.0, 1.0], [0.0, 1.0]])                        # set 0 = both classes
    loss, info = twohead_ml_unlabeled(weak, combo_strong, ml_strong, vocab, tau=0.95)
    # row 0: CE log 2 + BCE mean(log 2, log 2) = 2 log 2; row 1 masked; mean over 2 rows -> log 2
    assert info["ce"].item() == pytest.approx(math.log(2) / 2, abs=1e-12)
    assert info["bce"].item() == pytest.approx(math.log(2) / 2, abs=1e-12)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    loss.backward()
    assert torch.all(ml_strong.grad[1] == 0) and ml_strong.grad[0].tolist() == pytest.approx([-0.125, -0.125])
    with pytest.raises(UsclfError, match="K x C"):
        twohead_ml_unlabeled(weak, combo_strong, ml_strong, vocab[:, :1], tau=0.95)


def test_twohead_labeled_ignores_rare_set_in_ce_only():
    combo = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [0.5, 0.5, 1.0]], dtype=D)
    target = torch.tensor([0, -100, 2])
    ml = torch.tensor([[1.0, -1.0], [0.0, 2.0], [-2.0, 0.5]], dtype=D)
    ml_t = torch.tensor([[1, 0], [1, 1], [0, 1]], dtype=D)
    total, parts = twohead_labeled(combo, ml, target, ml_t)
    exp_ce = (naive_ce([2.0, 0.0, -1.0], 0) + naive_ce([0.5, 0.5, 1.0], 2)) / 2
    exp_bce = sum(bce(ml_t[i, c].item(), sig(ml[i, c].item())) for i in range(3) for c in range(2)) / 6
    assert parts["ce"].item() == pytest.approx(exp_ce, abs=1e-12)
    assert parts["bce"].item() == pytest.approx(exp_bce, abs=1e-12)
    assert total.item() == pytest.approx(exp_ce + exp_bce, abs=1e-12)
    # the ignored row still counts in BCE
    ml_t2 = ml_t.clone()
    ml_t2[1] = torch.tensor([0.0, 0.0])
    assert twohead_labeled(combo, ml, target, ml_t2)[1]["bce"].item() != pytest.approx(exp_bce)


def test_twohead_labeled_all_ignored_and_bad_ids():
    combo, ml = torch.zeros(2, 3), torch.zeros(2, 2)
    ml_t = torch.ones(2, 2)
    total, parts = twohead_labeled(combo, ml, torch.tensor([-100, -100]), ml_t)
    assert parts["ce"].item() == 0.0 and math.isfinite(total.item())
    with pytest.raises(UsclfError, match="outside"):
        twohead_labeled(combo, ml, torch.tensor([0, 3]), ml_t)
    with pytest.raises(UsclfError, match="LongTensor"):
        twohead_labeled(combo, ml, torch.tensor([0.0, 1.0]), ml_t)
    with pytest.raises(UsclfError, match="batch sizes"):
        twohead_labeled(combo, ml, torch.tensor([0]), ml_t)


def test_total_and_validation():
    assert fixmatch_total(torch.tensor(0.7), torch.tensor(0.2), lambda_u=3.0).item() == pytest.approx(1.3)
    assert fixmatch_total(torch.tensor(0.7), torch.tensor(0.2)).item() == pytest.approx(0.9)
    with pytest.raises(UsclfError, match="tau"):
        fixmatch_onehead_unlabeled(torch.zeros(2, 2), torch.zeros(2, 2), tau=1.5)
    with pytest.raises(UsclfError, match="empty"):
        fixmatch_twohead_unlabeled(torch.zeros(0, 2), torch.zeros(0, 2))
    with pytest.raises(UsclfError, match="N x C"):
        fixmatch_onehead_unlabeled(torch.zeros(2, 2), torch.zeros(3, 2))
