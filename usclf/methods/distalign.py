"""FixMatch on the label-combination head with distribution alignment (ReMixMatch; USB DistAlignEMAHook).

The weak-view probabilities are rescaled by (labelled combination distribution / running mean of the
model's predictions) before the pseudo-label and its confidence are read: rare label sets are not drowned
by the frequent ones (paper 003 Sec. 4: pseudo-labels ignore class imbalance).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsclfError
from ..losses.fixmatch import masked_hard_ce
from ..losses.ssl_adaptive import dist_align, dist_align_update
from .fixmatch import combo_info
from .semisup_base import SemisupMethod, all_ranks


@dataclass
class DistAlignOptions:
    momentum: float = 0.999   # USB DistAlignEMAHook default for the running model distribution


class FixMatchDATwoHead(SemisupMethod):
    """Two heads; pseudo-labels from distribution-aligned weak probabilities, mask aligned max >= tau."""
    name, head, Options = "fixmatch-da-twohead", "twohead", DistAlignOptions

    def check_options(self) -> None:
        if not 0.0 <= self.options.momentum < 1.0:
            raise UsclfError(f"fixmatch-da options: need 0 <= momentum < 1, got {self.options.momentum}")

    def init_state(self):
        k = len(self.vocab)
        counts = torch.zeros(k)
        for row in self.setup.y_labeled.astype(int):
            if tuple(row) in self.vocab:
                counts[self.vocab.index(tuple(row))] += 1
        return {"p_model": torch.full((k,), 1.0 / k), "p_target": counts / counts.sum()}

    def unlabeled_loss(self, out_weak, out_strong, idx=None):
        with torch.no_grad():
            probs = torch.softmax(out_weak[0].detach().float(), dim=1)
            every = torch.softmax(all_ranks(out_weak[0]).detach().float(), dim=1)  # DDP: the global batch
            p_model = dist_align_update(self.state["p_model"].to(probs.device), every, self.options.momentum)
            aligned = dist_align(probs, p_model, self.state["p_target"].to(probs.device))
            max_p, pseudo = aligned.max(dim=1)
            mask = max_p >= self.setup.tau
        self.state = {**self.state, "p_model": p_model.cpu()}
        loss = masked_hard_ce(out_strong[0], pseudo, mask)
        return loss, combo_info(self, {"mask_rate": mask.float().mean(), "pseudo": pseudo, "mask": mask})
