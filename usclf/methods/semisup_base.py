"""What every semi-supervised method shares: the one-forward-pass step, the labelled loss of its head,
the optional EMA teacher, pseudo-label diagnostics, and a checkpointed state.

A method subclass (on the protocol of base.py) sets `name`, `head` ('multilabel' | 'twohead'), `Options`
(a dataclass; the config's `options:` mapping is validated against it) and implements `unlabeled_loss`. Its
state (running thresholds, distributions) lives in `self.state` (a dict of tensors/lists) and is saved in
every checkpoint by the Trainer through `state_dict` / `load_state_dict`, never smuggled in as model buffers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import UsclfError
from ..eval.clustering import combination_vocabulary
from ..eval.pseudo_diagnostics import PseudoLabelDiagnostics
from ..losses.fixmatch import IGNORE_INDEX, fixmatch_total, twohead_labeled
from ..losses.supervised import multilabel_bce
from ..train.distributed import gather_with_grad, get_dist_info, mean_weights
from .base import Method, NoOptions  # noqa: F401 (NoOptions: importable from here as before)


@dataclass
class MethodSetup:
    """What a method is built from (shared FixMatch settings + the labelled data it may look at)."""
    classes: list[str]
    y_labeled: np.ndarray              # labelled train rows' 0/1 label matrix (N_l x C)
    tau: float = 0.95
    lambda_u: float = 1.0
    min_count: int = 1
    teacher: str = "student"           # student | ema: who makes the pseudo-labels
    truth: np.ndarray | None = None    # per manifest row, NaN = unknown; diagnostics only
    diagnostics: bool = True           # False: no per-step pseudo-label bookkeeping (no host copy per step)
    unlabeled_rows: np.ndarray | None = None  # manifest rows of the unlabelled pool: a row's index in it is `idx`
    forward: str = "joint"             # joint | separate: see SemisupConfig.forward


def combo_targets(y: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """Vocabulary id of each labelled row's label set (N), IGNORE_INDEX for sets outside the vocabulary."""
    hit = (y[:, None, :] == vocab[None].to(y)).all(dim=2)  # N x K
    return torch.where(hit.any(dim=1), hit.float().argmax(dim=1), torch.full_like(hit[:, 0], IGNORE_INDEX,
                                                                                  dtype=torch.long))


def all_ranks(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `t` (this rank's part of the batch), in rank order, without gradient; `t`
    itself without DDP. Running statistics and diagnostics use it, so every rank keeps the state of the global
    batch (the checkpoint, written by rank 0, then holds the state every rank has)."""
    if not get_dist_info().distributed:
        return t
    flag = t.dtype == torch.bool
    out = gather_with_grad((t.to(torch.uint8) if flag else t).detach())
    return out.bool() if flag else out


def _part(out, a: int, b: int):
    return tuple(o[a:b] for o in out) if isinstance(out, tuple) else out[a:b]


class SemisupMethod(Method):
    """Base class; see the module doc."""
    head: ClassVar[str] = "multilabel"

    def __init__(self, setup: MethodSetup, options: dict | None = None):
        self.setup = setup  # before the options: check_options may look at it
        super().__init__(options)
        if setup.teacher not in ("student", "ema"):
            raise UsclfError(f"teacher must be student or ema, got '{setup.teacher}'")
        if setup.forward not in ("joint", "separate"):
            raise UsclfError(f"forward must be joint or separate, got '{setup.forward}'")
        self.vocab: list[tuple[int, ...]] = []
        self.n_ignored = 0
        if self.head == "twohead":
            self.vocab, index = combination_vocabulary(setup.y_labeled.astype(int), setup.min_count)
            self.n_ignored = int((index < 0).sum())
        self.vocab_t = torch.tensor(self.vocab, dtype=torch.float32) if self.vocab else None
        self.diag = PseudoLabelDiagnostics(setup.classes, setup.truth, setup.y_labeled)
        self.state: dict[str, Any] = self.init_state()

    # ------------------------------------------------------------ to override
    def init_state(self) -> dict[str, Any]:
        return {}

    def unlabeled_loss(self, out_weak, out_strong, idx) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_u and info {'mask_rate', 'pseudo_ml' (N x C 0/1), 'mask_ml' (N x C bool)}; `idx` (N, long) is each
        unlabelled image's position in the pool (`MethodSetup.unlabeled_rows`; None when not given), the key
        of per-sample state such as FlexMatch's (USB's idx_ulb)."""
        raise NotImplementedError

    def pool_index(self, rows: torch.Tensor | None) -> torch.Tensor | None:
        """Positions of manifest `rows` in the unlabelled pool (None without a pool or rows)."""
        pool = self.setup.unlabeled_rows
        if pool is None or rows is None:
            return None
        if not hasattr(self, "_pool_sorted"):
            self._pool_order = np.argsort(pool, kind="stable")
            self._pool_sorted = np.asarray(pool)[self._pool_order]
        r = rows.detach().cpu().numpy()
        pos = np.searchsorted(self._pool_sorted, r)
        pos = np.minimum(pos, len(self._pool_sorted) - 1)
        if len(self._pool_sorted) == 0 or not np.array_equal(self._pool_sorted[pos], r):
            raise UsclfError("an unlabelled batch holds a row outside the method's unlabelled pool")
        return torch.as_tensor(self._pool_order[pos], dtype=torch.long, device=rows.device)

    # ------------------------------------------------------------ shared
    def model_sizes(self) -> dict[str, int]:
        c = len(self.setup.classes)
        return {"num_classes": c} if self.head == "multilabel" else {"num_combos": len(self.vocab), "num_classes": c}

    def meta(self) -> dict[str, Any]:
        """What the model file records about the method."""
        return {"method": self.name, "head": self.head,
                "vocab": [list(v) for v in self.vocab], "method_options": self.options_dict()}

    def labeled_loss(self, out, y: torch.Tensor):
        if self.head == "multilabel":
            return multilabel_bce(out, y), {}
        combo, ml = out
        return twohead_labeled(combo, ml, combo_targets(y, self.vocab_t), y)

    def combo_to_labels(self, combo_ids: torch.Tensor) -> torch.Tensor:
        """N x C label rows of vocabulary ids (two-head pseudo-labels as label sets)."""
        return self.vocab_t.to(combo_ids.device)[combo_ids]

    def __call__(self, model, batch, ctx):
        """The Trainer's step: labelled, weak and strong images in ONE forward pass (BatchNorm sees one batch),
        or with forward=separate in three (each group normalised by its own batch statistics)."""
        lab, unl = batch["labeled"], batch["unlabeled"]
        x, y = lab["views"][0], lab["y"]
        weak, strong = unl["views"]
        nl, nu = x.shape[0], weak.shape[0]
        if self.setup.forward == "joint":
            out = model(torch.cat([x, weak, strong]))
            out_lab, out_weak, out_strong = _part(out, 0, nl), _part(out, nl, nl + nu), _part(out, nl + nu, nl + 2 * nu)
        else:  # USB's use_cat=False: labelled, strong, then weak without gradient (it only makes targets)
            if getattr(ctx, "world_size", 1) > 1:
                raise UsclfError("forward=separate runs on one process only (DDP expects one forward per step)")
            out_lab, out_strong, out_weak = model(x), model(strong), None
            if self.setup.teacher == "student":  # an EMA teacher makes the targets below
                with torch.no_grad():
                    out_weak = model(weak)
        l_sup, parts = self.labeled_loss(out_lab, y)
        teacher = getattr(ctx, "ema", None) if ctx is not None else None
        if self.setup.teacher == "ema":
            if teacher is None:
                raise UsclfError("teacher=ema needs train.ema (the EMA decay, e.g. 0.999)")
            with torch.no_grad():
                out_weak = teacher(weak)
        idx = self.pool_index(unl.get("row"))
        l_u, info = self.unlabeled_loss(out_weak, out_strong, idx)
        metrics = {"loss_sup": l_sup.detach(), "loss_u": l_u.detach(), "mask_rate": info["mask_rate"],
                   "n_unlabeled": float(nu)}
        metrics.update({f"loss_{k}": v.detach() for k, v in parts.items()})
        metrics.update({k: v for k, v in info.items() if k.startswith("thr/")})
        if self.setup.diagnostics and "row" in unl:
            step = ctx.step if ctx is not None else len(self.diag.steps)
            pseudo, mask, rows = (all_ranks(t) for t in (info["pseudo_ml"], info["mask_ml"], unl["row"]))
            metrics.update(self.diag.update(step, pseudo, mask, rows))
        if ctx is not None and getattr(ctx, "world_size", 1) > 1:  # DDP: this rank's share of the global batch
            l_sup, l_u = self.rank_share(l_sup, parts, l_u, y, nu)
        return fixmatch_total(l_sup, l_u, self.setup.lambda_u), metrics

    def rank_share(self, l_sup, parts: dict, l_u, y: torch.Tensor, nu: int):
        """This rank's labelled and unlabelled losses weighted so that DDP's mean over ranks is the mean over
        the global batch. Each term is weighted by the rows it averages: the label-set CE only by the rows
        whose label set is in the vocabulary, which differ between ranks (a collective)."""
        nl = y.shape[0]
        if "ce" not in parts:
            w_sup, w_u = mean_weights([nl, nu], y.device)
            return l_sup * w_sup, l_u * w_u
        n_ce = int((combo_targets(y, self.vocab_t) != IGNORE_INDEX).sum())
        w_bce, w_u, w_ce = mean_weights([nl, nu, n_ce], y.device)
        return parts["bce"] * w_bce + parts["ce"] * w_ce, l_u * w_u

    def state_dict(self) -> dict[str, Any]:
        return {"state": {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in self.state.items()},
                "diag": self.diag.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.state = dict(sd["state"])
        self.diag.load_state_dict(sd["diag"])
