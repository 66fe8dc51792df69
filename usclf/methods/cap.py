"""One-head multi-label pseudo-labelling with class-distribution-aware thresholds (CAP, Xie et al. NeurIPS 2023).

Per class, the positive/negative thresholds are read from a FIFO pool of recent weak-view scores so that
the share of positive pseudo-labels follows the class's share in the labelled data; entries between the
two thresholds are ignored. This replaces FixMatch's one global tau, which in the multi-label case
accepts whole rows of mostly-negative pseudo-labels or none at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsclfError
from ..losses.ssl_adaptive import cap_onehead_unlabeled, cap_thresholds, ema_probs_pool
from .semisup_base import SemisupMethod, all_ranks


@dataclass
class CAPOptions:
    pool: int = 512           # recent unlabelled weak views the thresholds are estimated on (ours)


class CAPOneHead(SemisupMethod):
    """Sigmoid head; per-class positive/negative thresholds from the labelled class distribution."""
    name, head, Options = "cap-onehead", "multilabel", CAPOptions

    def check_options(self) -> None:
        if self.options.pool < 1:
            raise UsclfError(f"cap options: pool must be >= 1, got {self.options.pool}")

    def init_state(self):
        prior = torch.tensor(self.setup.y_labeled.mean(axis=0), dtype=torch.float32)
        return {"prior": prior, "pool": torch.zeros(0, prior.numel())}

    def unlabeled_loss(self, out_weak, out_strong, idx=None):
        with torch.no_grad():
            probs = torch.sigmoid(out_weak.detach().float())
            old = self.state["pool"]
            every = torch.sigmoid(all_ranks(out_weak).detach().float())  # DDP: every rank's rows join the pool
            pool = ema_probs_pool(old.to(probs.device) if len(old) else None, every, self.options.pool)
            tau_pos, tau_neg = cap_thresholds(pool, self.state["prior"].to(probs.device))
        self.state = {**self.state, "pool": pool.cpu()}
        loss, info = cap_onehead_unlabeled(out_weak, out_strong, tau_pos, tau_neg)
        pseudo = info["pseudo"].clamp_min(0).float()
        return loss, {"mask_rate": info["mask_rate"], "pseudo_ml": pseudo, "mask_ml": info["mask"],
                      "thr/pos_mean": tau_pos.mean(), "thr/neg_mean": tau_neg.mean()}
