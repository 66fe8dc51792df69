"""From network outputs to class scores, per-class thresholds chosen on validation, and test reports."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..eval.matching import cluster_scores, match_clusters
from ..eval.report import WEIGHTED, classification_report
from ..eval.thresholds import apply_thresholds, best_f1_thresholds


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def class_scores(head: str, out: np.ndarray, matching: np.ndarray | None = None, soft: bool = False) -> np.ndarray:
    """N x C scores in [0, 1]: matched-cluster label mix (cluster head, Algorithm 1) or sigmoid of logits."""
    if head == "cluster":
        return cluster_scores(out, matching, soft=soft)
    return sigmoid(out)


def fit_matching(head: str, out_dev: np.ndarray, y_dev: np.ndarray) -> np.ndarray | None:
    """Algorithm 1 on the development set for clustering models; None for classifiers."""
    return match_clusters(out_dev, y_dev.astype(int)) if head == "cluster" else None


def thresholds_and_report(y_dev, s_dev, y_test, s_test, classes) -> tuple[np.ndarray, pd.DataFrame]:
    """Per-class F1-optimal thresholds on dev, applied to test -> Table 1/2-style report."""
    th = best_f1_thresholds(y_dev.astype(int), s_dev)
    report = classification_report(y_test.astype(int), apply_thresholds(s_test, th), classes)
    return th, report


def val_weighted_f1(y_val, s_val) -> float:
    """Weighted F1 on validation with thresholds chosen on validation (early stopping / best selection)."""
    th = best_f1_thresholds(y_val.astype(int), s_val)
    return float(classification_report(y_val.astype(int), apply_thresholds(s_val, th),
                                       [str(i) for i in range(y_val.shape[1])]).loc[WEIGHTED, "f1"])


def format_report(report: pd.DataFrame, title: str = "") -> str:
    """Text table like the paper's Tables 1-2 (percentages)."""
    lines = [title] if title else []
    lines.append(f"{'class':<14}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>9}")
    for name, r in report.iterrows():
        lines.append(f"{name:<14}{100 * r.precision:>10.2f}{100 * r.recall:>10.2f}{100 * r.f1:>10.2f}"
                     f"{int(r.support):>9}")
    return "\n".join(lines)
