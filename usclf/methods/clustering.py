"""Deep-clustering methods for `usclf pretrain`: PICA and LSD (paper Sec. 2.2, Eqs. 1-7), on the method
protocol of base.py (options, the Trainer step, a checkpointed state: none here)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..losses.dirichlet import lsd_loss
from ..losses.pica import cluster_size_entropy, pica_loss
from ..train.distributed import gather_with_grad
from ..validate import non_negative, positive
from .base import Method


def effective_clusters(p: torch.Tensor) -> torch.Tensor:
    """exp(entropy of the argmax cluster sizes): 1 when every image lands in one cluster, K when balanced."""
    with torch.no_grad():
        n = torch.bincount(p.argmax(1), minlength=p.shape[1]).double()
        z = n / n.sum().clamp_min(1)
        return torch.exp(-(z * torch.log(z.clamp_min(1e-12))).sum()).float()


def collapse_warning(history: list[dict], k: int) -> str | None:
    """A one-line warning when the last epoch used fewer than max(1.5, K/4) effective clusters (our rule)."""
    eff = history[-1].get("train/effective_clusters") if history else None
    if eff is None or eff >= max(1.5, k / 4):
        return None
    return (f"warning: the clustering collapsed: {eff:.2f} effective clusters of K={k} in the last epoch "
            "(exp of the entropy of the argmax sizes); train longer, raise options.lam, or lower the learning rate")


@dataclass
class PICAOptions:
    lam: float = 2.0        # lambda, the weight of the cluster-size term (PICA's default, the paper's Table 1)


@dataclass
class LSDOptions(PICAOptions):
    epsilon: float = 0.01   # the Dirichlet alpha = 1 + epsilon (Eq. 6: "slightly higher than 1")


class ClusteringMethod(Method):
    """A deep-clustering method: both augmented views' cluster probabilities -> `loss(x, y)`. A subclass sets
    `name`, `Options` (at least `lam`) and `loss`; it has no state to checkpoint."""
    Options: ClassVar[type] = PICAOptions

    def check_options(self) -> None:
        non_negative("options.lam", self.options.lam)  # lambda weighs a penalty: a negative one rewards collapse

    def loss(self, x, y):
        raise NotImplementedError

    def run_params(self) -> dict[str, float]:
        """The tracked run's params of this method (beside method, K, seed, ...)."""
        return {"lambda": self.options.lam}

    def provenance(self) -> dict[str, float]:
        """What the model file's provenance records of this method."""
        return {"lambda": self.options.lam}

    def __call__(self, model, batch, ctx):
        """Trainer step: both augmented views in one forward pass; P gathered across ranks before the loss."""
        v1, v2 = batch["views"]
        n = v1.shape[0]
        p = model(torch.cat([v1, v2]))  # one pass: BatchNorm sees both views as one batch
        x, y = gather_with_grad(p[:n]), gather_with_grad(p[n:])
        loss, parts = self.loss(x, y)
        return loss, {**parts, "size_entropy": cluster_size_entropy(x.detach()),
                      "effective_clusters": effective_clusters(x.detach())}


class PICA(ClusteringMethod):
    """L = L_CE + lam * L_NE on the two views' cluster probabilities (Huang et al. CVPR 2020)."""
    name, Options = "pica", PICAOptions

    def loss(self, x, y):
        return pica_loss(x, y, lam=self.options.lam)


class LSD(ClusteringMethod):
    """PICA with L_NE replaced by the symmetric-Dirichlet prior L_SD, alpha = 1 + epsilon (Eq. 6)."""
    name, Options = "lsd", LSDOptions

    def check_options(self) -> None:
        super().check_options()
        positive("options.epsilon", self.options.epsilon)  # alpha = 1 + epsilon > 1

    def loss(self, x, y):
        return lsd_loss(x, y, lam=self.options.lam, alpha=1.0 + self.options.epsilon)

    def run_params(self) -> dict[str, float]:
        return {**super().run_params(), "alpha": 1.0 + self.options.epsilon}

    def provenance(self) -> dict[str, float]:
        return {**super().provenance(), "epsilon": self.options.epsilon}
