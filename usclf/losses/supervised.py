"""Supervised multi-label loss (paper 003 Eq. 9, read as standard BCE: the printed form has sign/log typos)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from usclf.errors import UsclfError
from usclf.losses.pica import upcast


def check_multilabel(logits: Tensor, targets: Tensor, what: str = "multi-label loss") -> None:
    """Logits and targets must both be N x C with the same shape."""
    if not isinstance(logits, Tensor) or not isinstance(targets, Tensor):
        raise UsclfError(f"{what}: logits and targets must be tensors")
    if logits.dim() != 2 or logits.shape != targets.shape:
        raise UsclfError(
            f"{what}: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be N x C"
        )


def multilabel_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """BCE-with-logits averaged over classes and rows (targets 0/1, or soft in [0, 1])."""
    check_multilabel(logits, targets)
    if logits.shape[0] == 0:
        raise UsclfError("multi-label loss: empty batch (N = 0)")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.binary_cross_entropy_with_logits(upcast(logits), targets.to(upcast(logits).dtype))
