"""FreeMatch on the label-combination head (Wang et al. ICLR 2023; USB's freematch.py).

Self-adaptive thresholds: a global confidence level (EMA of the mean max probability) scaled per
combination by its EMA class probability over the largest one. Early in training the threshold is ~1/K,
so pseudo-labels flow from the first step instead of waiting for 0.95 confidence (our diagnosis:
FixMatch's mask rate stays ~0 for hundreds of steps with K ~ 10 label sets).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsclfError
from ..losses.ssl_adaptive import freematch_fairness, freematch_init, freematch_unlabeled
from ..train.distributed import get_dist_info
from .fixmatch import combo_info
from .semisup_base import SemisupMethod, all_ranks


@dataclass
class FreeMatchOptions:
    momentum: float = 0.999   # USB freematch ema_p
    fairness: float = 0.0     # weight of the self-adaptive fairness term (USB ent_loss_ratio; 0 = off)


class FreeMatchTwoHead(SemisupMethod):
    """Two heads; the softmax head's unlabelled loss uses FreeMatch's self-adaptive thresholds."""
    name, head, Options = "freematch-twohead", "twohead", FreeMatchOptions

    def check_options(self) -> None:
        o = self.options
        if not 0.0 <= o.momentum < 1.0 or o.fairness < 0:
            raise UsclfError(f"freematch options: need 0 <= momentum < 1 and fairness >= 0, got {o}")

    def init_state(self):
        return freematch_init(len(self.vocab))

    def unlabeled_loss(self, out_weak, out_strong, idx=None):
        stats = all_ranks(out_weak[0]) if get_dist_info().distributed else None  # DDP: SAT of the global batch
        loss, info, self.state = freematch_unlabeled(out_weak[0], out_strong[0], self.state, self.options.momentum,
                                                     stats_logits=stats)
        if self.options.fairness:
            loss = loss + self.options.fairness * freematch_fairness(out_strong[0], info["mask"], self.state)
        return loss, {**combo_info(self, info), "thr/mean": info["thresholds"].mean().detach(),
                      "thr/global": self.state["time_p"].detach()}
