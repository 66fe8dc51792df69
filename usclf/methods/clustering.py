"""Deep-clustering methods for `usclf pretrain`: PICA and LSD (paper Sec. 2.2, Eqs. 1-7)."""
from __future__ import annotations

import torch

from ..errors import UsclfError
from ..losses.dirichlet import lsd_loss
from ..losses.pica import cluster_size_entropy, pica_loss
from ..train.distributed import gather_with_grad


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
            "(exp of the entropy of the argmax sizes); train longer, raise lam, or lower the learning rate")


class PICA:
    """L = L_CE + lam * L_NE on the two views' cluster probabilities (Huang et al. CVPR 2020)."""
    name = "pica"

    def __init__(self, lam: float, epsilon: float):
        if not lam >= 0:
            raise UsclfError(f"lam (lambda) must be >= 0, got {lam}")
        self.lam, self.epsilon = float(lam), float(epsilon)

    def loss(self, x, y):
        return pica_loss(x, y, lam=self.lam)

    def step(self, model, batch, ctx):
        """Trainer step: both augmented views in one forward pass; P gathered across ranks before the loss."""
        v1, v2 = batch["views"]
        n = v1.shape[0]
        p = model(torch.cat([v1, v2]))  # one pass: BatchNorm sees both views as one batch
        x, y = gather_with_grad(p[:n]), gather_with_grad(p[n:])
        loss, parts = self.loss(x, y)
        return loss, {**parts, "size_entropy": cluster_size_entropy(x.detach()),
                      "effective_clusters": effective_clusters(x.detach())}


class LSD(PICA):
    """PICA with L_NE replaced by the symmetric-Dirichlet prior L_SD, alpha = 1 + epsilon (Eq. 6)."""
    name = "lsd"

    def __init__(self, lam: float, epsilon: float):
        super().__init__(lam, epsilon)
        if not epsilon > 0:
            raise UsclfError(f"LSD needs alpha = 1 + epsilon > 1; got epsilon={epsilon}")

    def loss(self, x, y):
        return lsd_loss(x, y, lam=self.lam, alpha=1.0 + self.epsilon)
