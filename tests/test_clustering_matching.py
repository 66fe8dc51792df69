"""Clustering metrics vs sklearn / brute force, combination vocabulary, Algorithm 1 matching."""

from itertools import permutations

import numpy as np
import pytest
from sklearn import metrics as skm

from usclf.errors import UsclfError
from usclf.eval.clustering import (
    ari,
    clustering_metrics,
    combination_vocabulary,
    homogeneity,
    hungarian_acc,
    label_sets,
    nmi,
    purity,
)
from usclf.eval.matching import cluster_scores, match_clusters


def brute_force_map(labels, clusters):
    """Best accuracy of a one-to-one cluster -> label map, and every map reaching it (exhaustive)."""
    ls, cs = sorted(set(labels)), sorted(set(clusters))
    slots = ls + [None] * max(0, len(cs) - len(ls))  # None = cluster left unmatched
    scored = []
    for perm in set(permutations(slots, len(cs))):
        m = dict(zip(cs, perm))
        scored.append((sum(m[c] == y for y, c in zip(labels, clusters)), m))
    best = max(h for h, _ in scored)
    return best / len(labels), [m for h, m in scored if h == best]


@pytest.mark.parametrize("n_clusters", [3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_hungarian_acc_and_macro_f1_equal_brute_force(seed, n_clusters):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 40)
    clusters = np.where(rng.random(40) < 0.6, labels + 10, rng.integers(10, 10 + n_clusters, 40))
    acc, maps = brute_force_map(labels.tolist(), clusters.tolist())
    assert hungarian_acc(labels, clusters) == pytest.approx(acc)
    out = clustering_metrics(labels, clusters)
    assert out["acc"] == pytest.approx(acc)
    f1s = []
    for m in maps:  # the optimal map need not be unique: macro F1 must be that of one of them
        pred = np.array([-1 if m[c] is None else m[c] for c in clusters])
        f1s.append(skm.f1_score(labels, pred, labels=[0, 1, 2], average="macro", zero_division=0))
    assert any(out["macro_f1"] == pytest.approx(f) for f in f1s)


def test_sklearn_wrappers_and_permutation_invariance():
    rng = np.random.default_rng(4)
    y, c = rng.integers(0, 4, 50), rng.integers(0, 5, 50)
    renamed = np.array([7, 3, 9, 1, 5])[c]
    for ours, ref in ((nmi, skm.normalized_mutual_info_score), (ari, skm.adjusted_rand_score),
                      (homogeneity, skm.homogeneity_score)):
        assert ours(y, c) == pytest.approx(ref(y, c))
        assert ours(y, renamed) == pytest.approx(ref(y, c))
    assert hungarian_acc(y, renamed) == pytest.approx(hungarian_acc(y, c))


def test_purity_hand_example_and_perfect_clustering():
    y = np.array([0, 0, 1, 1, 1, 2])
    c = np.array([5, 5, 5, 6, 6, 6])  # majorities: 2 of 3, 2 of 3
    assert purity(y, c) == pytest.approx(4 / 6)
    assert hungarian_acc(y, c) == pytest.approx(4 / 6)
    # purity lets clusters share a label, Hungarian does not
    c2 = np.array([0, 1, 2, 3, 4, 5])
    assert purity(y, c2) == 1.0 and hungarian_acc(y, c2) == pytest.approx(3 / 6)
    perfect = clustering_metrics(y, np.array([2, 2, 0, 0, 0, 1]))
    for key in ("acc", "nmi", "ari", "homogeneity", "purity", "macro_f1"):
        assert perfect[key] == pytest.approx(1.0)


def test_multilabel_rows_scored_as_label_sets_and_silhouette():
    Y = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1]])
    sets = label_sets(Y)
    assert sets[0] == sets[1] and sets[2] == sets[3] and sets[4] == sets[5]
    assert len(set(sets.tolist())) == 3
    clusters = np.array([0, 0, 0, 1, 2, 2])
    feats = np.array([[0.0, 0], [0.1, 0], [0.2, 0], [5, 5], [9, 0], [9, 0.2]])
    out = clustering_metrics(Y, clusters, features=feats)
    assert out["acc"] == pytest.approx(hungarian_acc(sets, clusters)) == pytest.approx(5 / 6)
    assert out["silhouette"] == pytest.approx(skm.silhouette_score(feats, clusters))
    assert "silhouette" not in clustering_metrics(Y, np.zeros(6, int), features=feats)
    with pytest.raises(UsclfError, match="labels but"):
        clustering_metrics(Y, clusters[:5])
    with pytest.raises(UsclfError, match="0/1"):
        label_sets(Y * 2)


def test_combination_vocabulary_counts_and_ignore_index():
    a, b, other = [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]
    Y = np.array([b, a, a, other, a, b, [0, 1, 1, 0]])
    vocab, index = combination_vocabulary(Y, min_count=2)
    assert vocab == [tuple(a), tuple(b)]  # by count: a x3, b x2
    assert index.tolist() == [1, 0, 0, -100, 0, 1, -100]
    vocab1, index1 = combination_vocabulary(Y)
    assert vocab1 == [tuple(a), tuple(b), (0, 0, 0, 1), (0, 1, 1, 0)]  # ties: lexicographic
    assert index1.tolist() == [1, 0, 0, 2, 0, 1, 3]
    assert np.array_equal(np.array(vocab1)[index1], Y)  # the vocabulary decodes back to the labels
    with pytest.raises(UsclfError, match="min_count"):
        combination_vocabulary(Y, min_count=0)
    with pytest.raises(UsclfError, match="no label set"):
        combination_vocabulary(Y, min_count=10)


def test_match_clusters_with_empty_cluster():
    # argmax clusters: 0, 0, 1, 1, 1, 3 -> cluster 2 is empty and gets the dev prior
    P = np.array([
        [0.7, 0.1, 0.1, 0.1],
        [0.4, 0.3, 0.2, 0.1],
        [0.1, 0.6, 0.2, 0.1],
        [0.2, 0.5, 0.2, 0.1],
        [0.0, 0.9, 0.1, 0.0],
        [0.1, 0.1, 0.3, 0.5],
    ])
    Y = np.array([[1, 0], [1, 1], [0, 1], [0, 1], [1, 1], [0, 0]])
    V = match_clusters(P, Y)
    expected = np.array([[1.0, 0.5], [1 / 3, 1.0], [0.5, 4 / 6], [0.0, 0.0]])
    np.testing.assert_allclose(V, expected)
    hard = cluster_scores(P, V)
    np.testing.assert_allclose(hard[0], V[0])
    np.testing.assert_allclose(hard[5], V[3])
    soft = cluster_scores(P, V, soft=True)
    np.testing.assert_allclose(soft[5], 0.1 * V[0] + 0.1 * V[1] + 0.3 * V[2] + 0.5 * V[3])
    np.testing.assert_allclose(soft[0], [0.7 + 0.1 / 3 + 0.05, 0.35 + 0.1 + 0.1 * 4 / 6])


def test_matching_errors():
    with pytest.raises(UsclfError, match="N x C"):
        match_clusters(np.ones((3, 2)) / 2, np.zeros((4, 2)))
    with pytest.raises(UsclfError, match="0/1"):
        match_clusters(np.ones((2, 2)) / 2, np.full((2, 2), 0.5))
    with pytest.raises(UsclfError, match="K x C"):
        cluster_scores(np.ones((2, 3)) / 3, np.zeros((2, 2)))
    with pytest.raises(UsclfError, match="NaN"):
        cluster_scores(np.array([[np.nan, 1.0]]), np.zeros((2, 2)))
