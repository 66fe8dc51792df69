"""From network outputs to class scores, per-class thresholds chosen on validation, and test reports."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import UsclfError
from ..eval.clustering import label_sets
from ..eval.matching import cluster_scores, match_clusters
from ..eval.report import WEIGHTED, classification_report
from ..eval.thresholds import apply_thresholds, best_f1_thresholds


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


@dataclass(frozen=True)
class HeadKind:
    """How a head kind's outputs become class scores and clusters: the one place head kinds are told apart."""
    name: str
    matched: bool            # cluster head: Algorithm 1 maps its clusters to label mixes (paper Sec. 2.2.3)
    combo: bool              # two heads: a softmax over label combinations beside the multi-label logits

    def fit_matching(self, out_dev: np.ndarray, y_dev: np.ndarray) -> np.ndarray | None:
        """Algorithm 1 on the development set for clustering models; None for classifiers."""
        return match_clusters(out_dev, y_dev.astype(int)) if self.matched else None

    def scores(self, out: np.ndarray, matching: np.ndarray | None = None, soft: bool = False) -> np.ndarray:
        """N x C scores in [0, 1]: matched-cluster label mix (cluster head) or sigmoid of the logits."""
        return cluster_scores(out, matching, soft=soft) if self.matched else sigmoid(out)

    def clusters(self, outputs: dict, scores: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cluster id, confidence) per image: argmax cluster / label combination, or for a plain classifier
        its predicted label set (confidence: the smallest distance of a score to its threshold)."""
        if self.matched or self.combo:
            p = outputs["out"] if self.matched else outputs["combo"]
            return p.argmax(1), p.max(1)
        return label_sets((scores >= thresholds).astype(int)), np.abs(scores - thresholds).min(1)


HEAD_KINDS = {"multilabel": HeadKind("multilabel", matched=False, combo=False),
              "cluster": HeadKind("cluster", matched=True, combo=False),
              "twohead": HeadKind("twohead", matched=False, combo=True)}


def head_kind(name: str) -> HeadKind:
    """The HeadKind of a model's `head.kind`; one-line error for a kind this usclf does not know."""
    if name not in HEAD_KINDS:
        raise UsclfError(f"unknown head kind '{name}'; this usclf knows {', '.join(HEAD_KINDS)}")
    return HEAD_KINDS[name]


def class_scores(head: str, out: np.ndarray, matching: np.ndarray | None = None, soft: bool = False) -> np.ndarray:
    """N x C scores of head kind `head` (see HeadKind.scores)."""
    return head_kind(head).scores(out, matching, soft)


def fit_matching(head: str, out_dev: np.ndarray, y_dev: np.ndarray) -> np.ndarray | None:
    """Algorithm 1 on dev for a clustering head kind; None otherwise (see HeadKind.fit_matching)."""
    return head_kind(head).fit_matching(out_dev, y_dev)


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
