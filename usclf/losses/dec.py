"""DEC / IDEC clustering loss (Xie et al. 2016; docs/design.md §4.8)."""

from __future__ import annotations

import torch
from torch import Tensor

from usclf.errors import UsclfError


def student_t_q(z: Tensor, centers: Tensor, alpha: float = 1.0) -> Tensor:
    """Soft assignments q_ij ∝ (1 + |z_i - mu_j|^2 / alpha)^(-(alpha+1)/2), rows summing to 1 (N x K)."""
    if z.dim() != 2 or centers.dim() != 2 or z.shape[1] != centers.shape[1]:
        raise UsclfError(
            f"DEC: embeddings {tuple(z.shape)} and centers {tuple(centers.shape)} must be N x D and K x D"
        )
    if alpha <= 0:
        raise UsclfError(f"DEC: Student-t degrees of freedom alpha must be > 0, got {alpha}")
    # explicit squared differences: cdist's sqrt has an undefined gradient at zero distance
    d2 = (z.unsqueeze(1) - centers.unsqueeze(0)).pow(2).sum(-1)
    q = (1.0 + d2 / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(dim=1, keepdim=True)


def dec_target(q: Tensor) -> Tensor:
    """Target p_ij ∝ q_ij^2 / f_j with f_j = sum_i q_ij, row-normalised; no gradient."""
    if q.dim() != 2 or q.shape[0] == 0:
        raise UsclfError(f"DEC: q must be a non-empty N x K matrix, got shape {tuple(q.shape)}")
    with torch.no_grad():
        w = q.detach() ** 2 / q.detach().sum(dim=0)
        return w / w.sum(dim=1, keepdim=True)


def dec_kl(p: Tensor, q: Tensor) -> Tensor:
    """KL(P || Q) summed over clusters and averaged over rows (torch's 'batchmean', not 'mean')."""
    if p.shape != q.shape or q.dim() != 2 or q.shape[0] == 0:
        raise UsclfError(f"DEC: p {tuple(p.shape)} and q {tuple(q.shape)} must be the same non-empty N x K")
    # p log p with p = 0 is 0; xlogy gives that without NaN
    return (torch.xlogy(p, p) - p * torch.log(q.clamp_min(torch.finfo(q.dtype).tiny))).sum() / q.shape[0]
