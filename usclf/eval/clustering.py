"""Clustering metrics (docs/design.md §6.4) and the label-combination vocabulary (paper 003 Sec. 2.2.3).

Multi-label data is scored against label combinations: each distinct 0/1 row is one "class".
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm

from usclf.errors import UsclfError

IGNORE_INDEX = -100  # torch CrossEntropyLoss default ignore_index
SILHOUETTE_MAX_N = 10_000  # silhouette is O(N^2): above this it is estimated on a seeded sample


def _check_pair(labels, clusters) -> tuple[np.ndarray, np.ndarray]:
    y, c = np.asarray(labels).reshape(-1), np.asarray(clusters).reshape(-1)
    if np.asarray(labels).ndim != 1 or np.asarray(clusters).ndim != 1:
        raise UsclfError("clustering metrics: labels and clusters must be 1-D (use label_sets for N x C labels)")
    if y.shape != c.shape:
        raise UsclfError(f"clustering metrics: {y.size} labels but {c.size} cluster assignments")
    if y.size == 0:
        raise UsclfError("clustering metrics: no samples")
    return y, c


def _contingency(labels, clusters) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Counts table (clusters x labels) plus the row/col values and each sample's row/col index."""
    y, c = _check_pair(labels, clusters)
    _, yi = np.unique(y, return_inverse=True)
    _, ci = np.unique(c, return_inverse=True)
    table = np.zeros((ci.max() + 1, yi.max() + 1), dtype=np.int64)
    np.add.at(table, (ci, yi), 1)
    return table, yi, ci, y


def _hungarian_pred(labels, clusters) -> tuple[np.ndarray, np.ndarray]:
    """(label index, predicted label index) per sample after the one-to-one cluster->label matching that
    maximises agreement; samples of clusters left unmatched (more clusters than labels) get -1 (wrong)."""
    table, yi, ci, _ = _contingency(labels, clusters)
    rows, cols = linear_sum_assignment(table, maximize=True)
    cluster_to_label = np.full(table.shape[0], -1)
    cluster_to_label[rows] = cols
    return yi, cluster_to_label[ci]


def hungarian_acc(labels, clusters) -> float:
    """Unsupervised accuracy: best one-to-one cluster->label matching (Hungarian), fraction correct."""
    table, _, _, y = _contingency(labels, clusters)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / y.size)


def purity(labels, clusters) -> float:
    """Fraction of samples carrying their cluster's majority label (many clusters may share a label)."""
    table, _, _, y = _contingency(labels, clusters)
    return float(table.max(axis=1).sum() / y.size)


def nmi(labels, clusters) -> float:
    """Normalised mutual information (sklearn, arithmetic normalisation)."""
    return float(skm.normalized_mutual_info_score(*_check_pair(labels, clusters)))


def ari(labels, clusters) -> float:
    """Adjusted Rand index (sklearn)."""
    return float(skm.adjusted_rand_score(*_check_pair(labels, clusters)))


def homogeneity(labels, clusters) -> float:
    """Homogeneity: each cluster holds a single label (sklearn)."""
    return float(skm.homogeneity_score(*_check_pair(labels, clusters)))


def _check_multilabel(Y) -> np.ndarray:
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[0] == 0 or Y.shape[1] == 0:
        raise UsclfError(f"label matrix must be a non-empty N x C array, got shape {Y.shape}")
    if not np.isin(Y, (0, 1)).all():
        raise UsclfError("label matrix must contain only 0/1 values")
    return Y.astype(np.int64)


def label_sets(Y) -> np.ndarray:
    """Id of each row's label combination (ids follow the lexicographic order of the distinct rows)."""
    _, inv = np.unique(_check_multilabel(Y), axis=0, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def clustering_metrics(Y_or_labels, clusters, features=None) -> dict:
    """acc, nmi, ari, homogeneity, purity, macro_f1 (after Hungarian mapping) and, when features are
    given and there are >= 2 clusters (and fewer than N), silhouette. N x C labels are scored as label sets.
    """
    arr = np.asarray(Y_or_labels)
    labels = label_sets(arr) if arr.ndim == 2 else arr
    y, c = _check_pair(labels, clusters)
    yi, pred = _hungarian_pred(y, c)
    out = {
        "acc": hungarian_acc(y, c),
        "nmi": nmi(y, c),
        "ari": ari(y, c),
        "homogeneity": homogeneity(y, c),
        "purity": purity(y, c),
        "macro_f1": float(skm.f1_score(yi, pred, labels=np.arange(yi.max() + 1), average="macro", zero_division=0)),
    }
    if features is not None:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] != y.size:
            raise UsclfError(f"silhouette: features {f.shape} must be N x D with N = {y.size}")
        n_clusters = np.unique(c).size
        if 2 <= n_clusters < y.size:
            sample = SILHOUETTE_MAX_N if y.size > SILHOUETTE_MAX_N else None
            out["silhouette"] = float(skm.silhouette_score(f, c, sample_size=sample, random_state=0))
    return out


def combination_vocabulary(Y, min_count: int = 1) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Label-combination vocabulary (Sec. 2.2.3): the distinct 0/1 label rows seen >= min_count times.

    vocab entries are the rows themselves as 0/1 tuples of length C (`other` alone is a set like any
    other), ordered by count descending then lexicographically; K = len(vocab). index gives each row's
    vocab id, or -100 (the CE ignore index) for rows whose set is rarer than min_count.
    """
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise UsclfError(f"combination vocabulary: min_count must be an integer >= 1, got {min_count!r}")
    Y = _check_multilabel(Y)
    rows = [tuple(int(v) for v in r) for r in Y]
    counts = Counter(rows)
    vocab = sorted((s for s, n in counts.items() if n >= min_count), key=lambda s: (-counts[s], s))
    if not vocab:
        raise UsclfError(f"combination vocabulary: no label set occurs at least {min_count} times")
    pos = {s: i for i, s in enumerate(vocab)}
    index = np.array([pos.get(r, IGNORE_INDEX) for r in rows], dtype=np.int64)
    return vocab, index
