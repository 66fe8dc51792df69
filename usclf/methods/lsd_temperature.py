"""`lsd-temp`: LSD with a temperature T on PICA's cluster-level cosine logits (option `temperature`).

PICA's L_CE (losses/pica.py) is a K-way cross-entropy over M = norm(x)^T norm(y), the cosines between the
two views' cluster columns, with the diagonal as target. The columns are non-negative, so every cosine lies
in [0, 1]: at T = 1 even perfectly separated clusters (M = I) leave L_CE = log(1 + (K - 1) / e), and the
logits can never be sharper than that. Contrastive Clustering (Li et al., AAAI 2021) divides the same
cluster-column cosines by a cluster-level temperature tau_C (its own cluster-level loss is a 2K-way NT-Xent;
only the temperature is taken here): L_CE(T) = CE(M / T, diag), so M = I gives log(1 + (K - 1) e^(-1/T)).

L = L_CE(T) + lam * L_SD(alpha = 1 + epsilon), the LSD prior unchanged (losses/dirichlet.py). T = 1 (the
default, Contrastive Clustering's tau_C = 1.0) is LSD exactly; T < 1 sharpens the cluster-level contrast.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..losses.dirichlet import dirichlet_prior_loss
from ..losses.pica import check_prob_pair, upcast
from ..validate import positive
from .clustering import LSD, LSDOptions


def tempered_pui_cross_entropy(x: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
    """L_CE(T): CE over the K x K cosine matrix M = norm(x)^T norm(y) divided by T, target = diagonal."""
    k = check_prob_pair(x, y)
    with torch.autocast(device_type=x.device.type, enabled=False):  # cosines and their softmax in float32
        m = F.normalize(upcast(x), p=2, dim=0).t() @ F.normalize(upcast(y), p=2, dim=0)
        return F.cross_entropy(m / temperature, torch.arange(k, device=x.device))


def lsd_temp_loss(x: Tensor, y: Tensor, lam: float = 2.0, alpha: float = 1.01,
                  temperature: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """L_CE(T) + lam * L_SD; returns (total, {"ce", "sd"}) like lsd_loss."""
    ce = tempered_pui_cross_entropy(x, y, temperature)
    sd = dirichlet_prior_loss(x, alpha)
    return ce + lam * sd, {"ce": ce, "sd": sd}


@dataclass
class LSDTempOptions(LSDOptions):
    temperature: float = 1.0  # T on the cosine logits, > 0; 1 = LSD (Contrastive Clustering's tau_C = 1.0)


class LSDTemp(LSD):
    """LSD whose partition-uncertainty cross-entropy divides the cluster-column cosines by `temperature`."""
    name, Options = "lsd-temp", LSDTempOptions

    def check_options(self) -> None:
        super().check_options()
        positive("options.temperature", self.options.temperature)

    def loss(self, x, y):
        o = self.options
        return lsd_temp_loss(x, y, lam=o.lam, alpha=1.0 + o.epsilon, temperature=o.temperature)

    def run_params(self) -> dict[str, float]:
        return {**super().run_params(), "temperature": self.options.temperature}

    def provenance(self) -> dict[str, float]:
        return {**super().provenance(), "temperature": self.options.temperature}
