"""Per-class F1 thresholds vs brute force, report vs sklearn, seeds summary vs the t-distribution."""

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_curve, precision_recall_fscore_support

from usclf.errors import UsclfError
from usclf.eval.report import classification_report, seeds_summary
from usclf.eval.thresholds import apply_thresholds, best_f1_thresholds


def brute_force_threshold(y, s):
    """Try every unique score value; keep the best F1, the lowest threshold among ties."""
    best_t, best_f1 = None, -1.0
    for t in sorted(np.unique(s)):  # ascending: a later equal F1 does not replace the earlier (lower) t
        f1 = f1_score(y, (s >= t).astype(int), zero_division=0)
        if f1 > best_f1 + 1e-12:
            best_t, best_f1 = t, f1
    return best_t, best_f1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_equal_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, c = 60, 5
    y = (rng.random((n, c)) < [0.1, 0.3, 0.5, 0.7, 0.9]).astype(int)
    # coarse scores -> many tied values; weakly informative so the optimum is not trivial
    scores = np.round(np.clip(0.3 * y + rng.random((n, c)) * 0.8, 0, 1), 1)
    th = best_f1_thresholds(y, scores)
    for k in range(c):
        t, f1 = brute_force_threshold(y[:, k], scores[:, k])
        assert th[k] == t
        assert f1_score(y[:, k], apply_thresholds(scores, th)[:, k]) == pytest.approx(f1)
        # the chosen point is on sklearn's PR curve and attains its best F1
        prec, rec, thr = precision_recall_curve(y[:, k], scores[:, k])
        with np.errstate(invalid="ignore", divide="ignore"):
            pr_f1 = np.nan_to_num(2 * prec * rec / (prec + rec))
        assert th[k] in thr
        assert f1 == pytest.approx(pr_f1.max())


def test_tie_goes_to_lowest_threshold():
    # t = 0.9: TP 1 FP 0 FN 1 -> F1 2/3; t = 0.3: TP 2 FP 2 FN 0 -> F1 4/6 = 2/3 as well
    y = np.array([[1], [0], [0], [1]])
    s = np.array([[0.9], [0.6], [0.5], [0.3]])
    assert best_f1_thresholds(y, s)[0] == 0.3


def test_no_positive_class_gets_half_and_apply_is_inclusive():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[0.8, 0.9], [0.2, 0.1], [0.6, 0.3]])
    th = best_f1_thresholds(y, s)
    assert th.tolist() == [0.6, 0.5]
    assert apply_thresholds(s, th).tolist() == [[1, 1], [0, 0], [1, 0]]
    assert apply_thresholds(np.array([[0.5, 0.5]]), np.array([0.5, 0.5001])).tolist() == [[1, 0]]


def test_threshold_input_errors():
    with pytest.raises(UsclfError, match="NaN"):
        best_f1_thresholds(np.array([[1], [0]]), np.array([[np.nan], [0.2]]))
    with pytest.raises(UsclfError, match="0/1"):
        best_f1_thresholds(np.array([[2], [0]]), np.array([[0.1], [0.2]]))
    with pytest.raises(UsclfError, match="same N x C"):
        best_f1_thresholds(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(UsclfError, match="thresholds for"):
        apply_thresholds(np.zeros((3, 2)), np.array([0.5]))
    with pytest.raises(UsclfError, match="NaN"):
        apply_thresholds(np.array([[np.nan, 0.1]]), np.array([0.5, 0.5]))


def test_report_equals_sklearn():
    rng = np.random.default_rng(3)
    y = (rng.random((40, 4)) < 0.4).astype(int)
    pred = (rng.random((40, 4)) < 0.4).astype(int)
    pred[:, 3] = 0  # a class never predicted: precision 0/0 -> 0
    classes = ["liver", "kidney", "spleen", "other"]
    df = classification_report(y, pred, classes)
    assert list(df.index) == classes + ["weighted avg"]
    assert list(df.columns) == ["precision", "recall", "f1", "support"]
    p, r, f, s = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    np.testing.assert_allclose(df.loc[classes, "precision"], p)
    np.testing.assert_allclose(df.loc[classes, "recall"], r)
    np.testing.assert_allclose(df.loc[classes, "f1"], f)
    assert df.loc[classes, "support"].tolist() == s.tolist()
    pw, rw, fw, _ = precision_recall_fscore_support(y, pred, average="weighted", zero_division=0)
    assert df.loc["weighted avg", ["precision", "recall", "f1"]].tolist() == pytest.approx([pw, rw, fw])
    assert df.loc["weighted avg", "support"] == y.sum()
    assert df.loc["other", "precision"] == 0.0


def test_report_hand_weighted_average():
    # class a: TP 2 FP 0 FN 1 -> P 1, R 2/3; class b: TP 1 FP 1 FN 0 -> P 1/2, R 1; supports 3 and 1
    y = np.array([[1, 0], [1, 1], [1, 0]])
    pred = np.array([[1, 1], [1, 1], [0, 0]])
    df = classification_report(y, pred, ["a", "b"])
    assert df.loc["weighted avg", "precision"] == pytest.approx((3 * 1 + 1 * 0.5) / 4)
    assert df.loc["weighted avg", "recall"] == pytest.approx((3 * 2 / 3 + 1 * 1) / 4)
    with pytest.raises(UsclfError, match="class names"):
        classification_report(y, pred, ["a"])
    with pytest.raises(UsclfError, match="0/1"):
        classification_report(y, pred * 0.7, ["a", "b"])


def test_seeds_summary_t_interval():
    out = seeds_summary([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(0.975, 2 dof) = 4.302652729911275
    half = 4.302652729911275 / math.sqrt(3)
    assert out["mean"] == 2.0 and out["best"] == 3.0 and out["n"] == 3
    assert out["ci95_low"] == pytest.approx(2 - half, abs=1e-9)
    assert out["ci95_high"] == pytest.approx(2 + half, abs=1e-9)
    one = seeds_summary([0.7])
    assert one["mean"] == 0.7 and math.isnan(one["ci95_low"]) and math.isnan(one["ci95_high"])
    with pytest.raises(UsclfError, match="no values"):
        seeds_summary([])
    with pytest.raises(UsclfError, match="NaN"):
        seeds_summary([0.5, float("nan")])
