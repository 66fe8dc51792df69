"""Per-class report (layout of paper 003 Tables 1-2) and the across-seeds summary."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import precision_recall_fscore_support

from usclf.errors import UsclfError

WEIGHTED = "weighted avg"


def classification_report(y_true, y_pred, classes: Sequence[str]) -> pd.DataFrame:
    """Rows: each class + "weighted avg"; columns precision, recall, f1 (fractions in [0, 1]), support.

    Same numbers as sklearn's precision_recall_fscore_support (average=None / "weighted"), with 0 where a
    ratio is 0/0. The weighted row's support is the total number of positive labels (Table 1 "n_labels").
    """
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    if yt.ndim != 2 or yt.shape != yp.shape:
        raise UsclfError(f"report: y_true {yt.shape} and y_pred {yp.shape} must both be N x C")
    if yt.shape[1] != len(classes):
        raise UsclfError(f"report: {len(classes)} class names for {yt.shape[1]} label columns")
    if yt.shape[0] == 0:
        raise UsclfError("report: no rows to evaluate")
    if not (np.isin(yt, (0, 1)).all() and np.isin(yp, (0, 1)).all()):
        raise UsclfError("report: y_true and y_pred must be 0/1 matrices (threshold the scores first)")
    yt, yp = yt.astype(np.int64), yp.astype(np.int64)
    p, r, f, sup = precision_recall_fscore_support(yt, yp, average=None, zero_division=0)
    pw, rw, fw, _ = precision_recall_fscore_support(yt, yp, average="weighted", zero_division=0)
    df = pd.DataFrame(
        {
            "precision": np.r_[p, pw],
            "recall": np.r_[r, rw],
            "f1": np.r_[f, fw],
            "support": np.r_[sup, sup.sum()].astype(np.int64),
        },
        index=[*map(str, classes), WEIGHTED],
    )
    return df


def seeds_summary(values: list[float]) -> dict:
    """Across seeds: mean, best (max), std (ddof 1), 95 % CI of the mean (Student t, n-1 dof), n.

    With one value the CI is undefined and reported as NaN.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise UsclfError("seeds summary: no values")
    if not np.isfinite(v).all():
        raise UsclfError("seeds summary: values contain NaN or inf")
    n, mean = int(v.size), float(v.mean())
    if n < 2:
        std = half = math.nan
    else:
        std = float(v.std(ddof=1))
        half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "best": float(v.max()), "std": std, "ci95_low": mean - half, "ci95_high": mean + half, "n": n}
