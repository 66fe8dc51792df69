"""Head kinds: the one place where cluster / multi-label / two-head outputs become scores and clusters."""
from __future__ import annotations

import numpy as np
import pytest

from usclf.errors import UsclfError
from usclf.stages.scoring import HEAD_KINDS, head_kind


def test_cluster_head_scores_through_the_matching_and_clusters_by_argmax():
    kind = head_kind("cluster")
    P = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    V = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.25]])          # K = 3 clusters -> C = 2 label mixes
    assert np.allclose(kind.scores(P, V), [[1.0, 0.0], [0.0, 0.25]])
    assert np.allclose(kind.scores(P, V, soft=True), [[0.8, 0.125], [0.15, 0.25]])  # sum_k p_k V[k]
    c, conf = kind.clusters({"out": P}, kind.scores(P, V), np.array([0.5, 0.5]))
    assert c.tolist() == [0, 2] and np.allclose(conf, [0.7, 0.8])
    y = np.array([[1, 0], [1, 0], [0, 1]])
    assert np.allclose(kind.fit_matching(np.eye(3)[[0, 0, 2]], y)[[0, 2]], [[1, 0], [0, 1]])


def test_classifier_heads_score_by_sigmoid_and_cluster_by_label_set_or_combination():
    logits = np.array([[0.0, 2.0], [-2.0, 0.0]])
    s = 1 / (1 + np.exp(-logits))
    ml, two = head_kind("multilabel"), head_kind("twohead")
    assert np.allclose(ml.scores(logits), s) and np.allclose(two.scores(logits), s)
    assert ml.fit_matching(logits, np.zeros((2, 2))) is None
    c, conf = ml.clusters({"out": logits}, s, np.array([0.5, 0.6]))
    assert c.tolist() == [1, 0]                                    # label sets {1} and {} -> ids by lexicographic order
    assert np.allclose(conf, np.abs(s - [0.5, 0.6]).min(1))
    combo = np.array([[0.1, 0.9], [0.6, 0.4]])
    assert two.clusters({"out": logits, "combo": combo}, s, np.array([0.5, 0.5]))[0].tolist() == [1, 0]
    assert {k for k, v in HEAD_KINDS.items() if v.matched} == {"cluster"}


def test_unknown_head_kind_is_one_line():
    with pytest.raises(UsclfError, match="unknown head kind 'ranking'"):
        head_kind("ranking")
