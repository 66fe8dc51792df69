"""PICA loss (paper 003 Eqs. 1-4; Huang et al. CVPR 2020, official code Raymond-sci/PICA `PUILoss`).

Inputs are the softmax outputs of two augmented views, x (view ~) and y (view ^), both N x K.
The loss is NOT symmetric in (x, y): rows of M come from x and the cluster-size distribution Z from x only,
as in the official code. Swapping the views changes the gradient (tests check it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from usclf.errors import UsclfError


def check_prob_pair(x: Tensor, y: Tensor | None = None) -> int:
    """Validate N x K probability matrices (N >= 1, K >= 2, same shape); return K."""
    for name, t in (("x", x), ("y", y)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.dim() != 2:
            raise UsclfError(f"clustering loss: {name} must be a 2-D N x K tensor of probabilities")
    if y is not None and x.shape != y.shape:
        raise UsclfError(f"clustering loss: views have different shapes {tuple(x.shape)} vs {tuple(y.shape)}")
    n, k = x.shape
    if n < 1:
        raise UsclfError("clustering loss: empty batch (N = 0)")
    if k < 2:
        raise UsclfError(f"clustering loss: need at least 2 clusters, got K = {k}")
    return k


def upcast(t: Tensor) -> Tensor:
    """t in at least float32 (half/bfloat16 -> float32; float64 kept), keeping the graph."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) or not t.is_floating_point() else t


def cluster_size_distribution(x: Tensor) -> Tensor:
    """Z: column sums of x normalised to 1 (the batch's soft cluster sizes), in at least float32."""
    s = upcast(x).sum(0)
    return s / s.sum()


def _xlogx(z: Tensor) -> Tensor:
    # clamp inside the log only, so an empty cluster contributes 0 (not 0 * -inf = NaN) with a finite grad
    return z * torch.log(z.clamp_min(torch.finfo(z.dtype).tiny))


def pui_cross_entropy(x: Tensor, y: Tensor) -> Tensor:
    """L_CE (Eqs. 1-3): CE over the K x K cosine matrix M = norm(x)^T norm(y), target = diagonal."""
    k = check_prob_pair(x, y)
    # autocast would run the matmul in bf16/fp16; the cosines and their softmax need float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        m = F.normalize(upcast(x), p=2, dim=0).t() @ F.normalize(upcast(y), p=2, dim=0)
        return F.cross_entropy(m, torch.arange(k, device=x.device))


def pica_loss(x: Tensor, y: Tensor, lam: float = 2.0) -> tuple[Tensor, dict[str, Tensor]]:
    """PICA total L_CE + lam * L_NE (lam = 2: PICA paper / 003 Sec. 3.3); returns (total, {"ce", "ne"})."""
    k = check_prob_pair(x, y)
    ce = pui_cross_entropy(x, y)
    with torch.autocast(device_type=x.device.type, enabled=False):
        z = cluster_size_distribution(x)
        ne = math.log(k) + _xlogx(z).sum()
    return ce + lam * ne, {"ce": ce, "ne": ne}


def cluster_size_entropy(p: Tensor) -> Tensor:
    """Entropy H(Z) of the cluster-size distribution of p (N x K); log K when clusters are balanced."""
    check_prob_pair(p)
    with torch.no_grad():
        return -_xlogx(cluster_size_distribution(p)).sum()
