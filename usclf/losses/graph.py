"""Graph-embedding loss of IDEC with graph embedding (paper 000, Eqs. 6-7).

G_ij = 1 when x_i is the nearest neighbour of x_j or x_j that of x_i (Euclidean, on the input pixels);
L_g = 1/(2n) * sum_i sum_j G_ij |z_i - z_j|^2. On a mini-batch the sum runs over the batch's anchors i
and all their graph neighbours j (forwarded with the batch), divided by 2B.
"""
from __future__ import annotations

import numpy as np
from torch import Tensor

from usclf.errors import UsclfError


def knn_graph(X: np.ndarray, k: int = 1) -> list[np.ndarray]:
    """Symmetrised k-nearest-neighbour graph (Eq. 7; the paper's Delta(x) is the single nearest neighbour,
    k = 1) as one array of neighbour indices per row. Self-matches (duplicates of a row) are excluded."""
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    if not 1 <= k < len(X):
        raise UsclfError(f"graph: need 1 <= k < number of samples ({len(X)}), got k = {k}")
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
    n = len(X)
    nbrs: list[set[int]] = [set() for _ in range(n)]
    for i in range(n):
        got = [int(j) for j in idx[i] if j != i][:k]   # an exact duplicate may come before i itself
        for j in got:
            nbrs[i].add(j)
            nbrs[j].add(i)
    return [np.array(sorted(s), dtype=np.int64) for s in nbrs]


def graph_pairs(rows: np.ndarray, neighbours: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """For anchor rows, (owner, neighbour_row): owner indexes into `rows`, one entry per graph edge."""
    owner = np.concatenate([np.full(len(neighbours[r]), i, dtype=np.int64) for i, r in enumerate(rows)])
    nb = np.concatenate([neighbours[r] for r in rows])
    return owner, nb


def graph_loss(z_anchor: Tensor, z_neighbour: Tensor, owner: Tensor) -> Tensor:
    """L_g (Eq. 6) on a batch: sum over edges of |z_anchor[owner] - z_neighbour|^2, divided by 2B."""
    if z_anchor.dim() != 2 or z_neighbour.dim() != 2 or z_anchor.shape[1] != z_neighbour.shape[1]:
        raise UsclfError(f"graph loss: embeddings {tuple(z_anchor.shape)} and {tuple(z_neighbour.shape)} "
                         "must be B x D and E x D")
    if owner.shape != (z_neighbour.shape[0],):
        raise UsclfError("graph loss: owner must give one anchor index per neighbour embedding")
    if z_anchor.shape[0] == 0:
        raise UsclfError("graph loss: empty batch")
    d2 = (z_anchor[owner] - z_neighbour).pow(2).sum(1)
    return d2.sum() / (2.0 * z_anchor.shape[0])
