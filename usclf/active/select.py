"""Which frames to label next: pure ranking functions over per-frame clusters, typicality and uncertainty.

`select_frames` (strategy "coverage", the default of `usclf suggest`): first cover clusters that hold fewer
than `cover` labelled frames, taking each one's most typical unlabelled frame (clusters with the fewest
labelled members first, larger pools first among equals), then the most uncertain frames. A frame that is a
near duplicate (thumbnail correlation >= `dup_corr`) of a chosen or already labelled frame of the same exam is
passed over: one sweep of a cine loop gives dozens of near-identical frames. "uncertainty" skips the cover
step; "random" draws uniformly (seeded, no duplicate test) as the baseline an annotator would otherwise use.
Ties go to the lower row index, so the same inputs give the same suggestions.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import UsclfError

STRATEGIES = ("coverage", "uncertainty", "random")


@dataclass
class Candidates:
    """Per-frame facts over the labelled frames and the pool (same row order in every array)."""
    cluster: np.ndarray        # int cluster id (clustering model: argmax; classifier: its predicted label set)
    typicality: np.ndarray     # higher = more typical of its cluster (e.g. the cluster probability)
    uncertainty: np.ndarray    # higher = less certain (see `margin_uncertainty`, `cluster_uncertainty`)
    why: list[str]             # human-readable reason for the uncertainty value
    exam: np.ndarray           # exam id per frame (duplicates are looked for within an exam)
    thumbs: np.ndarray         # N x D unit-norm zero-mean thumbnails (`thumbnails`)
    labelled: np.ndarray       # bool: already labelled (never suggested, counted for coverage)


@dataclass
class Pick:
    index: int
    reason: str
    score: float


def thumbnails(images: np.ndarray, side: int = 16) -> np.ndarray:
    """N x side^2 zero-mean unit-norm thumbnails: their dot product is the images' correlation at low res."""
    t = np.stack([cv2.resize(np.asarray(im), (side, side), interpolation=cv2.INTER_AREA) for im in images])
    t = t.reshape(len(images), -1).astype(np.float64)
    t -= t.mean(1, keepdims=True)
    n = np.linalg.norm(t, axis=1, keepdims=True)
    return t / np.where(n > 0, n, 1.0)


def margin_uncertainty(scores: np.ndarray, thresholds: np.ndarray, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """Multi-label uncertainty: minus the smallest |score - threshold| over classes (the class nearest its
    decision boundary decides), with that class named in the reason."""
    m = np.abs(np.asarray(scores, float) - np.asarray(thresholds, float)[None])
    c = m.argmin(1)
    why = [f"uncertain: {classes[j]} (score {scores[i, j]:.2f}, threshold {thresholds[j]:.2f})"
           for i, j in enumerate(c)]
    return -m[np.arange(len(m)), c], why


def cluster_uncertainty(probs: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Clustering-model uncertainty: 1 - the largest cluster probability."""
    p = np.asarray(probs, float).max(1)
    return 1.0 - p, [f"uncertain cluster assignment (p {v:.2f})" for v in p]


def _check(c: Candidates, budget: int, strategy: str, cover: int, dup_corr: float) -> None:
    n = len(c.cluster)
    if strategy not in STRATEGIES:
        raise UsclfError(f"unknown suggestion strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    if budget < 1 or cover < 0 or not 0 < dup_corr <= 1:
        raise UsclfError(f"budget must be >= 1, cover >= 0 and dup_corr in (0, 1]; got {budget}, {cover}, {dup_corr}")
    for name in ("typicality", "uncertainty", "exam", "thumbs", "labelled"):
        if len(getattr(c, name)) != n:
            raise UsclfError(f"candidates: {name} has {len(getattr(c, name))} rows, cluster has {n}")


class _Chosen:
    """Chosen + labelled frames per exam, for the near-duplicate test."""

    def __init__(self, c: Candidates, dup_corr: float):
        self.c, self.dup_corr, self.by_exam = c, dup_corr, {}
        for i in np.flatnonzero(c.labelled):
            self.by_exam.setdefault(c.exam[i], []).append(i)

    def is_dup(self, i: int) -> bool:
        seen = self.by_exam.get(self.c.exam[i], [])
        return bool(seen) and float((self.c.thumbs[seen] @ self.c.thumbs[i]).max()) >= self.dup_corr

    def add(self, i: int) -> None:
        self.by_exam.setdefault(self.c.exam[i], []).append(i)


def select_frames(c: Candidates, budget: int, strategy: str = "coverage", cover: int = 1, dup_corr: float = 0.95,
                  seed: int = 0) -> list[Pick]:
    """Up to `budget` pool frames to label next, best first (see module docstring)."""
    _check(c, budget, strategy, cover, dup_corr)
    pool = np.flatnonzero(~np.asarray(c.labelled, bool))
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(pool)[:budget]
        return [Pick(int(i), "random", 0.0) for i in order]
    picks, taken, chosen = [], set(), _Chosen(c, dup_corr)

    def take(i: int, reason: str, score: float) -> None:
        picks.append(Pick(int(i), reason, float(score)))
        taken.add(int(i))
        chosen.add(int(i))

    if strategy == "coverage" and cover > 0:
        k_all = int(c.cluster.max()) + 1 if len(c.cluster) else 0
        counts = np.bincount(c.cluster[c.labelled.astype(bool)], minlength=k_all)
        members: dict[int, list[int]] = {k: [] for k in range(k_all)}
        for i in pool[np.argsort(-c.typicality[pool], kind="stable")]:  # most typical first within a cluster
            members[int(c.cluster[i])].append(int(i))
        while len(picks) < budget:
            need = [k for k in range(k_all) if counts[k] < cover and members[k]]
            if not need:
                break
            for k in sorted(need, key=lambda k: (counts[k], -len(members[k]), k)):
                while members[k] and chosen.is_dup(members[k][0]):
                    members[k].pop(0)
                if not members[k]:
                    continue
                i = members[k].pop(0)
                take(i, f"cover cluster {k} ({counts[k]} labelled)", c.typicality[i])
                counts[k] += 1
                if len(picks) >= budget:
                    break
    for i in pool[np.argsort(-c.uncertainty[pool], kind="stable")]:
        if len(picks) >= budget:
            break
        if int(i) not in taken and not chosen.is_dup(int(i)):
            take(int(i), c.why[i], c.uncertainty[i])
    return picks
