"""Per-class decision thresholds that maximise F1 on validation (paper 003 Sec. 3.2)."""

from __future__ import annotations

import numpy as np

from usclf.errors import UsclfError

NO_POSITIVE_THRESHOLD = 0.5  # a class with no validation positives has no F1 to maximise: fall back to 0.5


def _as_matrix(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise UsclfError(f"{name} must be an N x C array, got {arr.ndim} dimensions")
    return arr


def check_labels(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """Validate a 0/1 label matrix and a finite score matrix of the same N x C shape."""
    y = _as_matrix(y_true, "y_true")
    s = _as_matrix(scores, "scores").astype(np.float64)
    if y.shape != s.shape:
        raise UsclfError(f"y_true {y.shape} and scores {s.shape} must have the same N x C shape")
    if y.shape[0] == 0:
        raise UsclfError("cannot choose thresholds on an empty set (N = 0)")
    if not np.isin(y, (0, 1)).all():
        raise UsclfError("y_true must contain only 0/1 labels")
    if not np.isfinite(s).all():
        raise UsclfError("scores contain NaN or inf")
    return y.astype(np.int64), s


def best_f1_threshold_1d(y: np.ndarray, s: np.ndarray) -> float:
    """Threshold t (a score value; predict s >= t) maximising F1 for one class.

    The candidates are the distinct score values, i.e. the points of sklearn's precision_recall_curve.
    F1 = 2TP / (2TP + FP + FN) is computed from integer counts so equal F1s tie exactly; among ties the
    lowest threshold wins (more recall for the same F1).
    """
    n_pos = int(y.sum())
    if n_pos == 0:
        return NO_POSITIVE_THRESHOLD
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(1 - y_sorted)
    # last position of each run of equal scores = all samples with score >= that value predicted positive
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    tp, fp = tp[last], fp[last]
    f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
    best = np.flatnonzero(f1 == f1.max())[-1]  # thresholds decrease along `last`: the last tie is the lowest
    return float(s_sorted[last[best]])


def best_f1_thresholds(y_true, scores) -> np.ndarray:
    """Per-class thresholds (length C) maximising validation F1; see best_f1_threshold_1d."""
    y, s = check_labels(y_true, scores)
    return np.array([best_f1_threshold_1d(y[:, c], s[:, c]) for c in range(y.shape[1])], dtype=np.float64)


def apply_thresholds(scores, thresholds) -> np.ndarray:
    """0/1 predictions (N x C int): score >= the class's threshold."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise UsclfError(f"scores must be an N x C array, got {s.ndim} dimensions")
    if not np.isfinite(s).all():
        raise UsclfError("scores contain NaN or inf")
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if t.shape[0] != s.shape[1]:
        raise UsclfError(f"{t.shape[0]} thresholds for {s.shape[1]} score columns")
    if not np.isfinite(t).all():
        raise UsclfError("thresholds contain NaN or inf")
    return (s >= t[None, :]).astype(np.int64)
