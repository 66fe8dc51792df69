"""The baselines' Trainer steps, on the method protocol (methods/base.py): each is a `Method` called as
`step(model, batch, ctx)` whose batch is the row indices of the images it trains on, and whatever must survive a
kill-and-resume (DEC's target distribution P and last hard labels, DeepCluster's pseudo-labels) is its
`state_dict`, which the Trainer saves in every checkpoint and restores on resume."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..losses.dec import dec_target
from ..losses.graph import graph_loss, graph_pairs
from ..methods.base import Method


class _TensorState(Method):
    """A step whose state is a few tensors, restored in place (samplers hold references to them)."""
    state_keys: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        return {k: getattr(self, k).detach().cpu().clone() for k in self.state_keys}

    def load_state_dict(self, sd: dict) -> None:
        for k in self.state_keys:
            getattr(self, k).copy_(sd[k])


def graph_term(encode: Callable, X: torch.Tensor, idx: torch.Tensor, z: torch.Tensor, nbrs) -> torch.Tensor:
    """Paper 000's graph embedding term for a batch: its rows' embeddings against their k nearest neighbours'."""
    owner, nb = graph_pairs(idx.cpu().numpy(), nbrs)
    z_nb = encode(X[torch.as_tensor(nb, device=X.device)])
    return graph_loss(z, z_nb, torch.as_tensor(owner, device=X.device))


class ReconstructionStep(Method):
    """Autoencoder pretraining: `loss_fn(net, x) -> (loss, embedding, parts)` (+ gamma x the graph term)."""
    name = "ae-pretrain"

    def __init__(self, X: torch.Tensor, loss_fn: Callable, gamma: float = 0.0, nbrs=None):
        super().__init__()
        self.X, self.loss_fn, self.gamma, self.nbrs = X, loss_fn, gamma, nbrs

    def __call__(self, net, idx, ctx):
        loss, z, parts = self.loss_fn(net, self.X[idx])
        if not self.gamma:
            return loss, parts
        g = graph_term(lambda v: net(v)[0], self.X, idx, z, self.nbrs)
        return loss + self.gamma * g, {**parts, "graph": g}


class DECStep(_TensorState):
    """DEC / IDEC / DCEC / IDCEC self-training: `loss_fn(net, target, idx) -> (loss, parts)` against the target
    P, which `refresh` recomputes every epoch (= update interval) and stops on when < tol of the labels changed."""
    name = "dec-cluster"
    state_keys = ("target", "labels")

    def __init__(self, loss_fn: Callable, q_all: Callable, labels: torch.Tensor, target: torch.Tensor, tol: float):
        super().__init__()
        self.loss_fn, self.q_all, self.tol = loss_fn, q_all, tol
        self.labels, self.target = labels.clone(), target.clone()

    def __call__(self, net, idx, ctx):
        return self.loss_fn(net, self.target, idx)

    def refresh(self, epoch: int, model) -> dict:
        q = self.q_all(model)
        new = q.argmax(1)
        changed = float((new != self.labels).float().mean())
        self.labels.copy_(new)
        self.target.copy_(dec_target(q))
        return {"delta_label": changed, "stop": changed < self.tol}


class PseudoLabelStep(Method):
    """Cross-entropy of `augment(X[idx])` against fixed pseudo-labels `y[idx]` (IDCEC's CNN, Alg. 1 l. 16-19)."""
    name = "pseudo-label-ce"

    def __init__(self, X: torch.Tensor, y: torch.Tensor, augment: Callable):
        super().__init__()
        self.X, self.y, self.augment = X, y, augment

    def __call__(self, net, idx, ctx):
        ce = F.cross_entropy(net(self.augment(self.X[idx])), self.y[idx])
        return ce, {"ce": ce}


class DeepClusterStep(_TensorState):
    """DeepCluster: cross-entropy against this epoch's k-means pseudo-labels; the batch carries manifest rows,
    mapped to positions in `pseudo` (which the uniform sampler reads, so it is updated in place)."""
    name = "deepcluster"
    state_keys = ("pseudo",)

    def __init__(self, rows, device):
        super().__init__()
        self.position = {int(r): i for i, r in enumerate(rows)}
        self.pseudo = torch.zeros(len(rows), dtype=torch.long, device=device)

    def __call__(self, net, batch, ctx):
        pos = torch.as_tensor([self.position[int(r)] for r in batch["row"]], device=batch["views"][0].device)
        loss = F.cross_entropy(net(batch["views"][0]), self.pseudo[pos])
        return loss, {"ce": loss}
