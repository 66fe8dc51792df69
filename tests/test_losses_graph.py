"""Graph-embedding loss of IDEC + graph (paper 000 Eqs. 6-7) on hand-checkable inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from usclf.errors import UsclfError
from usclf.losses.graph import graph_loss, graph_pairs, knn_graph


def test_nearest_neighbour_graph_is_symmetrised():
    # points on a line: 0, 1, 3, 10 -> nearest neighbours 0->1, 1->0, 3->1, 10->3
    X = np.array([[0.0], [1.0], [3.0], [10.0]])
    nbrs = knn_graph(X, k=1)
    assert [n.tolist() for n in nbrs] == [[1], [0, 2], [1, 3], [2]]


def test_duplicate_rows_are_neighbours_not_self_loops():
    nbrs = knn_graph(np.array([[0.0], [0.0], [5.0]]), k=1)
    assert all(i not in n for i, n in enumerate(nbrs))
    assert 1 in nbrs[0] and 0 in nbrs[1]


def test_graph_loss_by_hand():
    # anchors z0 = (0, 0), z1 = (1, 0); edges 0-(3, 4) and 1-(1, 1): |.|^2 = 25 and 1; sum 26 / (2 * 2)
    z_a = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    z_n = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    loss = graph_loss(z_a, z_n, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(6.5)
    loss.backward()
    # d/dz0 of |z0 - (3,4)|^2 / 4 = 2 (z0 - (3,4)) / 4
    assert torch.allclose(z_a.grad, torch.tensor([[-1.5, -2.0], [0.0, -0.5]]))


def test_graph_pairs_flatten_neighbours_per_anchor():
    nbrs = [np.array([1]), np.array([0, 2]), np.array([1])]
    owner, nb = graph_pairs(np.array([1, 2]), nbrs)
    assert owner.tolist() == [0, 0, 1] and nb.tolist() == [0, 2, 1]


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(UsclfError, match="k < number of samples"):
        knn_graph(np.zeros((2, 3)), k=2)
    with pytest.raises(UsclfError, match="one anchor index per neighbour"):
        graph_loss(torch.zeros(2, 2), torch.zeros(3, 2), torch.tensor([0, 1]))
