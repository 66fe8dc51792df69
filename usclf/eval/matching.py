"""Cluster -> multi-label matching (paper 003 Algorithm 1)."""

from __future__ import annotations

import numpy as np

from usclf.errors import UsclfError


def _check_probs(P, name: str = "P") -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] == 0 or P.shape[1] == 0:
        raise UsclfError(f"matching: {name} must be a non-empty N x K matrix of cluster probabilities, got {P.shape}")
    if not np.isfinite(P).all():
        raise UsclfError(f"matching: {name} contains NaN or inf")
    return P


def match_clusters(P_dev, Y_dev) -> np.ndarray:
    """K x C matrix V: row k = mean label vector of dev images whose argmax cluster is k (Algorithm 1).

    A cluster that receives no dev image gets the dev-set prior (mean label vector) instead of 0/0.
    """
    P = _check_probs(P_dev, "P_dev")
    Y = np.asarray(Y_dev)
    if Y.ndim != 2 or Y.shape[0] != P.shape[0]:
        raise UsclfError(f"matching: Y_dev {Y.shape} must be N x C with N = {P.shape[0]} rows like P_dev")
    if not np.isin(Y, (0, 1)).all():
        raise UsclfError("matching: Y_dev must contain only 0/1 labels")
    Y = Y.astype(np.float64)
    k = P.shape[1]
    assign = P.argmax(axis=1)
    sums = np.zeros((k, Y.shape[1]))
    np.add.at(sums, assign, Y)
    counts = np.bincount(assign, minlength=k)
    V = np.tile(Y.mean(axis=0), (k, 1))
    filled = counts > 0
    V[filled] = sums[filled] / counts[filled, None]
    return V


def cluster_scores(P, V, soft: bool = False) -> np.ndarray:
    """N x C class scores: V[argmax_k p] (Algorithm 1), or the soft mix sum_k p_k V[k] when soft=True."""
    P = _check_probs(P)
    V = np.asarray(V, dtype=np.float64)
    if V.ndim != 2 or V.shape[0] != P.shape[1]:
        raise UsclfError(f"matching: V {V.shape} must be K x C with K = {P.shape[1]} clusters like P")
    return P @ V if soft else V[P.argmax(axis=1)]
