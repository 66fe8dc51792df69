"""FixMatch losses for multi-label data (paper 003 Sec. 2.3.2; Sohn et al. 2020, kekmodel/FixMatch-pytorch).

Conventions shared by both variants (FixMatch defaults): pseudo-labels come from the weak view without
gradient, the confidence test is `>= tau` (tau = 0.95), and L_u is averaged over ALL unlabelled rows,
masked rows counting as 0 - so a falling mask rate shrinks L_u (log "mask_rate": drifting to 0 is the
known failure).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from usclf.errors import UsclfError
from usclf.losses.pica import upcast
from usclf.losses.supervised import check_multilabel, multilabel_bce

IGNORE_INDEX = -100  # label sets outside the combination vocabulary (torch's CE default)


def _check_tau(tau: float) -> None:
    if not 0.0 <= tau <= 1.0:
        raise UsclfError(f"FixMatch: confidence threshold tau must be in [0, 1], got {tau}")


def _check_views(weak: Tensor, strong: Tensor) -> None:
    check_multilabel(weak, strong, "FixMatch unlabelled loss (weak vs strong logits)")
    if weak.shape[0] == 0:
        raise UsclfError("FixMatch unlabelled loss: empty unlabelled batch (N = 0)")


def fixmatch_onehead_unlabeled(
    logits_weak: Tensor, logits_strong: Tensor, tau: float = 0.95
) -> tuple[Tensor, dict[str, Tensor]]:
    """One-head L_u: sigmoid pseudo-labels y_c = [p~_c >= 0.5], kept when max_c p~_c >= tau (Sec. 2.3.2 i).

    Returns (loss, {"mask_rate", "pseudo" (N x C float), "mask" (N bool)}).
    """
    _check_tau(tau)
    _check_views(logits_weak, logits_strong)
    with torch.autocast(device_type=logits_strong.device.type, enabled=False):
        with torch.no_grad():
            p_weak = torch.sigmoid(upcast(logits_weak.detach()))
            pseudo = (p_weak >= 0.5).to(p_weak.dtype)
            mask = p_weak.max(dim=1).values >= tau
        strong = upcast(logits_strong)
        per_row = F.binary_cross_entropy_with_logits(strong, pseudo.to(strong.dtype), reduction="none").mean(1)
        loss = (per_row * mask.to(per_row.dtype)).mean()
    return loss, {"mask_rate": mask.float().mean(), "pseudo": pseudo, "mask": mask}


def fixmatch_twohead_unlabeled(
    softmax_logits_weak: Tensor, softmax_logits_strong: Tensor, tau: float = 0.95
) -> tuple[Tensor, dict[str, Tensor]]:
    """Standard FixMatch on the combination (softmax) head: argmax pseudo-label, mask max p~ >= tau.

    Returns (loss, {"mask_rate", "pseudo" (N long), "mask" (N bool)}).
    """
    _check_tau(tau)
    _check_views(softmax_logits_weak, softmax_logits_strong)
    with torch.autocast(device_type=softmax_logits_strong.device.type, enabled=False):
        with torch.no_grad():
            probs = torch.softmax(upcast(softmax_logits_weak.detach()), dim=1)
            max_p, pseudo = probs.max(dim=1)
            mask = max_p >= tau
        per_row = F.cross_entropy(upcast(softmax_logits_strong), pseudo, reduction="none")
        loss = (per_row * mask.to(per_row.dtype)).mean()
    return loss, {"mask_rate": mask.float().mean(), "pseudo": pseudo, "mask": mask}


def twohead_labeled(
    combo_logits: Tensor, ml_logits: Tensor, combo_target: Tensor, ml_target: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """Labelled two-head loss: CE(w, p) on the combination head + BCE(v, p_bar) on the sigmoid head.

    Rows whose combo_target is -100 (label set outside the vocabulary) are left out of the CE term only;
    the CE is the mean over the remaining rows (0 when none remain). Returns (total, {"ce", "bce"}).
    """
    if not isinstance(combo_logits, Tensor) or combo_logits.dim() != 2:
        raise UsclfError("two-head loss: combo_logits must be an N x K tensor")
    if not isinstance(combo_target, Tensor) or combo_target.dtype != torch.long:
        raise UsclfError("two-head loss: combo_target must be a LongTensor of combination ids")
    check_multilabel(ml_logits, ml_target, "two-head loss (multi-label head)")
    n, k = combo_logits.shape
    if combo_target.shape != (n,) or ml_logits.shape[:1] != (n,):
        raise UsclfError(
            f"two-head loss: batch sizes differ (combo_logits {n}, combo_target {tuple(combo_target.shape)}, "
            f"ml_logits {tuple(ml_logits.shape)})"
        )
    bad = ((combo_target < 0) & (combo_target != IGNORE_INDEX)) | (combo_target >= k)
    if bool(bad.any()):
        raise UsclfError(f"two-head loss: combo_target has ids outside [0, {k}) other than {IGNORE_INDEX}")
    bce = multilabel_bce(ml_logits, ml_target)
    with torch.autocast(device_type=combo_logits.device.type, enabled=False):
        ce_sum = F.cross_entropy(upcast(combo_logits), combo_target, ignore_index=IGNORE_INDEX, reduction="sum")
        # torch's 'mean' is 0/0 = NaN when every row is ignored; clamp the count instead
        ce = ce_sum / (combo_target != IGNORE_INDEX).sum().clamp_min(1)
    return ce + bce, {"ce": ce, "bce": bce}


def fixmatch_total(l_sup: Tensor, l_u: Tensor, lambda_u: float = 1.0) -> Tensor:
    """L = L_sup + lambda_u * L_u (lambda_u = 1: FixMatch default)."""
    return l_sup + lambda_u * l_u


def masked_hard_ce(logits_strong: Tensor, pseudo: Tensor, mask: Tensor) -> Tensor:
    """CE of the strong-view logits to hard pseudo-labels, masked rows counting 0, mean over ALL rows."""
    if logits_strong.dim() != 2 or pseudo.shape != (logits_strong.shape[0],) or mask.shape != pseudo.shape:
        raise UsclfError(f"masked CE: logits {tuple(logits_strong.shape)}, pseudo {tuple(pseudo.shape)} and "
                         f"mask {tuple(mask.shape)} must be N x K, N and N")
    if logits_strong.shape[0] == 0:
        raise UsclfError("masked CE: empty unlabelled batch (N = 0)")
    with torch.autocast(device_type=logits_strong.device.type, enabled=False):
        per_row = F.cross_entropy(upcast(logits_strong), pseudo.long(), reduction="none")
        return (per_row * mask.to(per_row.dtype)).mean()


def twohead_ml_unlabeled(
    softmax_logits_weak: Tensor, softmax_logits_strong: Tensor, ml_logits_strong: Tensor, vocab: Tensor,
    tau: float = 0.95
) -> tuple[Tensor, dict[str, Tensor]]:
    """Two-head L_u whose accepted pseudo-labels also reach the sigmoid head (ours, not the paper's):
    FixMatch CE on the combination head + BCE of the strong-view sigmoid logits to the accepted
    combination's label set (vocab[pseudo], K x C 0/1), both masked by max p~ >= tau, mean over ALL rows.

    In the paper's two-head model the predicting (sigmoid) head learns from labels only. Returns (loss,
    {"mask_rate", "pseudo" (N long), "mask" (N bool), "ce", "bce"}).
    """
    ce, info = fixmatch_twohead_unlabeled(softmax_logits_weak, softmax_logits_strong, tau)
    if vocab.dim() != 2 or ml_logits_strong.shape != (softmax_logits_strong.shape[0], vocab.shape[1]) \
            or vocab.shape[0] != softmax_logits_strong.shape[1]:
        raise UsclfError(f"two-head ML pseudo-labels: vocab {tuple(vocab.shape)} must be K x C for combination "
                         f"logits {tuple(softmax_logits_strong.shape)} and sigmoid logits "
                         f"{tuple(ml_logits_strong.shape)}")
    with torch.autocast(device_type=ml_logits_strong.device.type, enabled=False):
        strong = upcast(ml_logits_strong)
        target = vocab.to(strong)[info["pseudo"]]
        per_row = F.binary_cross_entropy_with_logits(strong, target, reduction="none").mean(1)
        bce = (per_row * info["mask"].to(per_row.dtype)).mean()
    return ce + bce, {**info, "ce": ce, "bce": bce}
