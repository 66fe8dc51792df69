"""LSD: PICA with a symmetric-Dirichlet prior on the cluster-size distribution (paper 003 Eqs. 5-7).

L_SD = -(1/log K) * sum_k (alpha - 1) * log z_k. For alpha > 1 it is a weak log-barrier whose minimum is
still the uniform Z, but unlike L_NE it only pushes hard when a cluster is about to empty, so cluster
sizes can follow the data's imbalance.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from usclf.errors import UsclfError
from usclf.losses.pica import check_prob_pair, cluster_size_distribution, pui_cross_entropy


def dirichlet_prior_loss(x: Tensor, alpha: float, eps_clamp: float = 1e-8) -> Tensor:
    """L_SD (Eq. 6) on Z from x (N x K probabilities); z is clamped to >= eps_clamp before the log."""
    k = check_prob_pair(x)
    if not math.isfinite(alpha) or alpha <= 0:
        raise UsclfError(f"LSD: alpha must be a finite number > 0 (paper: 1 + eps), got {alpha}")
    if not 0 < eps_clamp < 1.0 / k:
        raise UsclfError(f"LSD: eps_clamp must be in (0, 1/K) = (0, {1.0 / k:.3g}), got {eps_clamp}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        z = cluster_size_distribution(x).clamp_min(eps_clamp)
        return -(alpha - 1.0) / math.log(k) * torch.log(z).sum()


def lsd_loss(x: Tensor, y: Tensor, lam: float = 2.0, alpha: float = 1.01) -> tuple[Tensor, dict[str, Tensor]]:
    """LSD total L_CE + lam * L_SD (Eq. 7); lam = 2 (PICA default), alpha = 1 + eps; returns (total, {"ce", "sd"})."""
    ce = pui_cross_entropy(x, y)
    sd = dirichlet_prior_loss(x, alpha)
    return ce + lam * sd, {"ce": ce, "sd": sd}
