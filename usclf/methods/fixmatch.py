"""The paper's multi-label FixMatch (Sec. 2.3.2): the reference implementations, results unchanged."""
from __future__ import annotations

import torch

from ..losses.fixmatch import fixmatch_onehead_unlabeled, fixmatch_twohead_unlabeled, twohead_ml_unlabeled
from .semisup_base import SemisupMethod


class FixMatchOneHead(SemisupMethod):
    """Sigmoid head; pseudo-label y_c = [p~_c >= 0.5] kept when max_c p~_c >= tau; BCE on the strong view."""
    name, head = "fixmatch-onehead", "multilabel"

    def unlabeled_loss(self, out_weak, out_strong, idx=None):
        loss, info = fixmatch_onehead_unlabeled(out_weak, out_strong, self.setup.tau)
        mask = info["mask"][:, None].expand_as(info["pseudo"])
        return loss, {"mask_rate": info["mask_rate"], "pseudo_ml": info["pseudo"], "mask_ml": mask}


class FixMatchTwoHead(SemisupMethod):
    """Standard FixMatch on the label-combination softmax head; the sigmoid head learns from labels only."""
    name, head = "fixmatch-twohead", "twohead"

    def unlabeled_loss(self, out_weak, out_strong, idx=None):
        loss, info = fixmatch_twohead_unlabeled(out_weak[0], out_strong[0], self.setup.tau)
        return loss, combo_info(self, info)


def combo_info(method: SemisupMethod, info: dict) -> dict[str, torch.Tensor]:
    """Diagnostics view of a combination-head pseudo-label: its label set, accepted as a whole row."""
    pseudo = method.combo_to_labels(info["pseudo"])
    return {**info, "pseudo_ml": pseudo, "mask_ml": info["mask"][:, None].expand_as(pseudo)}


class FixMatchTwoHeadML(SemisupMethod):
    """Two heads; an accepted combination pseudo-label also trains the sigmoid head that predicts (ours)."""
    name, head = "fixmatch-twohead-ml", "twohead"

    def unlabeled_loss(self, out_weak, out_strong, idx=None):
        loss, info = twohead_ml_unlabeled(out_weak[0], out_strong[0], out_strong[1], self.vocab_t, self.setup.tau)
        return loss, combo_info(self, info)
