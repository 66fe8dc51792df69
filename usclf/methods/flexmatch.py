"""FlexMatch on the label-combination head (Zhang et al., NeurIPS 2021; as USB's flexmatch.py implements it).

Curriculum pseudo-labelling: each combination's threshold is tau scaled by its *learning status*, the number
of unlabelled images whose latest confident (>= tau) prediction was that combination, over the largest such
count. Per-image predictions are kept by the image's position in the unlabelled pool (`idx`), so the status
counts images, not steps. Warm-up (USB `thresh_warmup=True`): the images never predicted confidently count
as one more bucket in the denominator, so thresholds start near 0 and rise as the model learns. The mapping
M(beta) = beta / (2 - beta) is the paper's convex choice (USB's default); `linear` is (beta + 1) / 2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UsclfError
from ..losses.fixmatch import masked_hard_ce
from ..train.distributed import get_dist_info
from .fixmatch import combo_info
from .semisup_base import SemisupMethod, all_ranks

MAPPINGS = ("convex", "linear")


def flex_status(selected: Tensor, k: int, previous: Tensor, warmup: bool = True) -> Tensor:
    """Learning status beta_c (K) from each pool image's selected class (-1 = never confident).

    USB: unchanged while one bucket (the unselected -1 bucket included) holds the whole pool; with warm-up
    beta_c = n_c / max(n_-1, n_1..n_K), without it n_c / max(n_1..n_K)."""
    counts = torch.bincount(selected.long() + 1, minlength=k + 1).to(previous.dtype)  # [n_-1, n_0, ..., n_K-1]
    if counts.max() >= selected.numel():
        return previous.clone()
    denom = counts.max() if warmup else counts[1:].max()
    return counts[1:] / denom


def flex_thresholds(status: Tensor, tau: float, mapping: str = "convex") -> Tensor:
    """Per-class thresholds tau * M(beta_c)."""
    if mapping == "convex":
        return tau * status / (2.0 - status)
    if mapping == "linear":
        return tau * (status + 1.0) / 2.0
    raise UsclfError(f"flexmatch mapping must be one of {', '.join(MAPPINGS)}, got '{mapping}'")


def flexmatch_unlabeled(logits_weak: Tensor, logits_strong: Tensor, idx: Tensor, state: dict[str, Tensor],
                        tau: float, mapping: str = "convex", warmup: bool = True,
                        every: tuple[Tensor, Tensor] | None = None):
    """(L_u, info, new state): the mask uses the status before this batch (as USB); then the images with
    max p >= tau record their class and the status is recomputed from the whole pool. `every`: the (idx, weak
    logits) the state is updated from instead (DDP: every rank's rows, as USB gathers idx_ulb and its probs)."""
    probs = torch.softmax(logits_weak.detach().float(), dim=1)
    conf, pseudo = probs.max(dim=1)
    status = state["status"].to(probs.device)
    mask = conf >= flex_thresholds(status, tau, mapping)[pseudo]
    selected = state["selected"].clone()
    if every is not None:
        idx = every[0]
        conf_all, pseudo_all = torch.softmax(every[1].detach().float(), dim=1).max(dim=1)
    else:
        conf_all, pseudo_all = conf, pseudo
    confident = conf_all >= tau
    selected[idx[confident].to(selected.device)] = pseudo_all[confident].to(selected.device)
    new = {"selected": selected, "status": flex_status(selected, status.numel(), state["status"], warmup)}
    loss = masked_hard_ce(logits_strong, pseudo, mask)
    return loss, {"mask": mask, "mask_rate": mask.float().mean(), "pseudo": pseudo}, new


@dataclass
class FlexMatchOptions:
    mapping: str = "convex"   # paper Sec. 3.2 / USB: the convex M(x) = x / (2 - x) works best
    warmup: bool = True       # USB flexmatch thresh_warmup default


class FlexMatchTwoHead(SemisupMethod):
    """Two heads; the softmax head's unlabelled loss uses FlexMatch's per-combination curriculum thresholds."""
    name, head, Options = "flexmatch-twohead", "twohead", FlexMatchOptions

    def check_options(self) -> None:
        if self.options.mapping not in MAPPINGS:
            raise UsclfError(f"flexmatch options: mapping must be one of {', '.join(MAPPINGS)}, "
                             f"got '{self.options.mapping}'")
        if self.setup.unlabeled_rows is None:
            raise UsclfError("flexmatch-twohead keeps a prediction per unlabelled image: it needs the pool's rows")

    def init_state(self):
        return {"selected": torch.full((len(self.setup.unlabeled_rows),), -1, dtype=torch.long),
                "status": torch.zeros(len(self.vocab))}

    def unlabeled_loss(self, out_weak, out_strong, idx=None):
        if idx is None:
            raise UsclfError("flexmatch-twohead needs each unlabelled image's pool index (batch key 'row')")
        # DDP: every rank's images update the per-image state, so all ranks hold the global batch's state
        every = (all_ranks(idx), all_ranks(out_weak[0])) if get_dist_info().distributed else None
        loss, info, self.state = flexmatch_unlabeled(out_weak[0], out_strong[0], idx, self.state, self.setup.tau,
                                                     self.options.mapping, self.options.warmup, every)
        thr = flex_thresholds(self.state["status"], self.setup.tau, self.options.mapping)
        return loss, {**combo_info(self, info), "thr/mean": thr.mean().detach()}
