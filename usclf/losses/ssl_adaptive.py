"""Adaptive-threshold pseudo-labelling for FixMatch-style training: FreeMatch, distribution alignment, CAP.

Pure functions: any running state is passed in and returned (never updated in place or kept in globals).
Statistics are computed without gradient on the weak view in at least float32 with autocast off; the
unlabelled losses are averaged over ALL unlabelled rows (entries), masked ones counting 0, as in fixmatch.py.
References: FreeMatch (Wang et al. ICLR 2023; USB semilearn/algorithms/freematch), ReMixMatch distribution
alignment (Berthelot et al. ICLR 2020; USB DistAlignEMAHook), CAP (Xie et al. NeurIPS 2023; xiemk/SSMLL-CAP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from usclf.errors import UsclfError
from usclf.losses.pica import upcast

EPS = 1e-6  # USB DistAlignEMAHook's additive constant; also our clamp for the multi-label odds


def _no_autocast(t: Tensor):
    return torch.autocast(device_type=t.device.type, enabled=False)


def _matrix(t: object, what: str) -> Tensor:
    if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise UsclfError(f"{what}: expected a non-empty N x C tensor, got {shape}")
    return t


def _vector(t: object, n: int, what: str) -> Tensor:
    if not isinstance(t, Tensor) or tuple(t.shape) != (n,):
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise UsclfError(f"{what}: expected a vector of length {n}, got {shape}")
    return t


def _check_momentum(m: float) -> None:
    if not 0.0 <= m <= 1.0:
        raise UsclfError(f"EMA momentum must be in [0, 1], got {m}")


# ---------------------------------------------------------------- FreeMatch (self-adaptive thresholding)


def freematch_init(k: int) -> dict[str, Tensor]:
    """SAT state at step 0 (FreeMatch "Self-Adaptive Thresholding"; USB FreeMatchThresholdingHook):
    tau_0 = 1/K, p~_0 = h~_0 = 1/K."""
    if not isinstance(k, int) or k < 2:
        raise UsclfError(f"FreeMatch: need at least 2 classes, got K = {k}")
    p = torch.full((k,), 1.0 / k)
    return {"time_p": p.mean(), "p_model": p, "label_hist": p.clone()}


def _check_state(state: dict, k: int) -> None:
    if not isinstance(state, dict) or not {"time_p", "p_model", "label_hist"} <= state.keys():
        raise UsclfError("FreeMatch: state must be a dict with time_p, p_model, label_hist (see freematch_init)")
    if not isinstance(state["time_p"], Tensor) or state["time_p"].dim() != 0:
        raise UsclfError("FreeMatch: state time_p must be a 0-d tensor (see freematch_init)")
    _vector(state["p_model"], k, "FreeMatch state p_model")
    _vector(state["label_hist"], k, "FreeMatch state label_hist")


def freematch_update(state: dict[str, Tensor], probs_weak: Tensor, momentum: float = 0.999) -> dict[str, Tensor]:
    """SAT EMA step (FreeMatch, global and local estimates): tau <- m tau + (1-m) mean max q; p~ <- m p~ + (1-m) mean q;
    h~ <- m h~ + (1-m) hist(argmax q) / N. Returns a new state."""
    _check_momentum(momentum)
    k = _matrix(probs_weak, "FreeMatch probs_weak").shape[1]
    _check_state(state, k)
    with _no_autocast(probs_weak), torch.no_grad():
        q = upcast(probs_weak.detach())
        dev, dt = q.device, q.dtype
        max_p, idx = q.max(dim=1)
        hist = torch.bincount(idx, minlength=k).to(dt)
        old = {key: state[key].detach().to(dev, dt) for key in ("time_p", "p_model", "label_hist")}
        return {
            "time_p": old["time_p"] * momentum + (1 - momentum) * max_p.mean(),
            "p_model": old["p_model"] * momentum + (1 - momentum) * q.mean(0),
            "label_hist": old["label_hist"] * momentum + (1 - momentum) * hist / hist.sum(),
        }


def freematch_thresholds(state: dict[str, Tensor]) -> Tensor:
    """Per-class thresholds tau_t(c) = MaxNorm(p~_t)(c) * tau_t (FreeMatch SAT)."""
    p = state["p_model"]
    return state["time_p"] * p / p.max()


def freematch_mask(state: dict[str, Tensor], probs_weak: Tensor) -> Tensor:
    """Keep row i when max_c q_ic >= tau_t(argmax q_i) (USB `max_probs.ge(...)`). USB first updates the state
    with the same batch, then masks: call freematch_update before this (freematch_unlabeled does)."""
    k = _matrix(probs_weak, "FreeMatch probs_weak").shape[1]
    _check_state(state, k)
    with _no_autocast(probs_weak), torch.no_grad():
        q = upcast(probs_weak.detach())
        max_p, idx = q.max(dim=1)
        return max_p >= freematch_thresholds(state).to(q.device, q.dtype)[idx]


def freematch_unlabeled(
    logits_weak: Tensor, logits_strong: Tensor, state: dict[str, Tensor], momentum: float = 0.999,
    stats_logits: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """FreeMatch L_u: update SAT with the weak batch, then CE(strong, argmax q) on kept rows, mean over
    ALL rows. Returns (loss, {"mask_rate", "pseudo" (N long), "mask" (N bool), "thresholds" (K)}, new_state).
    `stats_logits`: the weak logits SAT is updated with instead (DDP: every rank's rows, as USB gathers)."""
    k = _matrix(logits_weak, "FreeMatch logits_weak").shape[1]
    if _matrix(logits_strong, "FreeMatch logits_strong").shape != logits_weak.shape:
        raise UsclfError(f"FreeMatch: weak {tuple(logits_weak.shape)} and strong {tuple(logits_strong.shape)} differ")
    _check_state(state, k)
    with _no_autocast(logits_strong):
        with torch.no_grad():
            q = torch.softmax(upcast(logits_weak.detach()), dim=1)
            q_all = q if stats_logits is None else torch.softmax(upcast(stats_logits.detach()), dim=1)
            new_state = freematch_update(state, q_all, momentum)  # USB: update before masking, same batch
            mask = freematch_mask(new_state, q)
            pseudo = q.argmax(dim=1)
        per_row = F.cross_entropy(upcast(logits_strong), pseudo, reduction="none")
        loss = (per_row * mask.to(per_row.dtype)).mean()
    info = {"mask_rate": mask.float().mean(), "pseudo": pseudo, "mask": mask,
            "thresholds": freematch_thresholds(new_state)}
    return loss, info, new_state


def freematch_fairness(logits_strong: Tensor, mask: Tensor, state: dict[str, Tensor]) -> Tensor:
    """FreeMatch "Self-Adaptive Fairness" L_f = -H(SumNorm(p~/h~), SumNorm(p_bar/h_bar)) over the kept rows,
    as USB's `entropy_loss`: sum_c a_c log(b_c + 1e-12), 1/0 scalers set to 0, 0 when no row is kept.
    Weight: USB's --ent_loss_ratio argparse default is 0.01; its classic_cv configs use 0.001."""
    k = _matrix(logits_strong, "FreeMatch fairness logits_strong").shape[1]
    if not isinstance(mask, Tensor) or tuple(mask.shape) != (logits_strong.shape[0],):
        raise UsclfError(f"FreeMatch fairness: mask must be a length-{logits_strong.shape[0]} vector")
    _check_state(state, k)
    with _no_autocast(logits_strong):
        s = upcast(logits_strong)
        keep = mask.detach().bool().to(s.device)
        if not bool(keep.any()):
            return s.sum() * 0.0  # USB uses 0.0 here; a zero that keeps the graph (and DDP) intact
        prob_s = torch.softmax(s[keep], dim=1)
        hist_s = torch.bincount(prob_s.detach().argmax(1), minlength=k).to(s.dtype)
        hist_s = hist_s / hist_s.sum()

        def inv(h: Tensor) -> Tensor:  # USB replace_inf_to_zero(1 / h)
            return torch.where(h > 0, 1.0 / h, torch.zeros_like(h))

        a = state["p_model"].detach().to(s.device, s.dtype) * inv(state["label_hist"].detach().to(s.device, s.dtype))
        a = a / a.sum()
        b = prob_s.mean(0) * inv(hist_s)
        b = b / b.sum()
        return (a * torch.log(b + 1e-12)).sum()


# ---------------------------------------------------------------- distribution alignment


def dist_align_update(p_model: Tensor | None, probs: Tensor, momentum: float = 0.999) -> Tensor:
    """Running mean of the model's class distribution (ReMixMatch "Distribution Alignment"; USB
    DistAlignEMAHook.update_p): the first call (p_model None) takes the batch mean, later ones
    m p_model + (1-m) mean(probs)."""
    _check_momentum(momentum)
    k = _matrix(probs, "distribution alignment probs").shape[1]
    with _no_autocast(probs), torch.no_grad():
        mean = upcast(probs.detach()).mean(0)
        if p_model is None:
            return mean
        old = _vector(p_model, k, "distribution alignment p_model").detach().to(mean)
        return old * momentum + (1 - momentum) * mean


def dist_align(probs: Tensor, p_model: Tensor, p_target: Tensor) -> Tensor:
    """q~ = Normalize(q * p_target / p_model) (ReMixMatch); USB adds 1e-6 to both vectors, so do we.
    USB updates p_model with the batch first, then aligns it (dist_align_update, then this)."""
    k = _matrix(probs, "distribution alignment probs").shape[1]
    with _no_autocast(probs), torch.no_grad():
        q = upcast(probs.detach())
        t = _vector(p_target, k, "distribution alignment p_target").detach().to(q)
        m = _vector(p_model, k, "distribution alignment p_model").detach().to(q)
        out = q * (t + EPS) / (m + EPS)
        return out / out.sum(dim=1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)


def dist_align_multilabel(probs: Tensor, p_model: Tensor, p_target: Tensor) -> Tensor:
    """Independent-sigmoid analogue of DA - our multi-label adaptation, not in ReMixMatch: per class scale the odds,
    odds' = odds * [t/(1-t)] / [m/(1-m)], i.e. p' = p r / (p r + 1 - p) (t, m clamped to [1e-6, 1-1e-6])."""
    c = _matrix(probs, "multi-label distribution alignment probs").shape[1]
    with _no_autocast(probs), torch.no_grad():
        p = upcast(probs.detach())
        t = _vector(p_target, c, "multi-label distribution alignment p_target").detach().to(p).clamp(EPS, 1 - EPS)
        m = _vector(p_model, c, "multi-label distribution alignment p_model").detach().to(p).clamp(EPS, 1 - EPS)
        r = (t / (1 - t)) / (m / (1 - m))
        return p * r / (p * r + (1 - p))  # denominator >= min(r, 1) > 0; p = 0 / 1 stay 0 / 1


# ---------------------------------------------------------------- CAP (class-distribution-aware pseudo-labels)


def ema_probs_pool(pool: Tensor | None, probs: Tensor, max_rows: int) -> Tensor:
    """FIFO of the most recent max_rows rows of weak-view probabilities (oldest dropped first), detached.
    CAP sets its thresholds on the whole unlabelled set each epoch; this pool is our batch-wise stand-in."""
    if not isinstance(max_rows, int) or max_rows < 1:
        raise UsclfError(f"probability pool: max_rows must be a positive int, got {max_rows}")
    new = upcast(_matrix(probs, "probability pool probs").detach())
    if pool is not None:
        if _matrix(pool, "probability pool").shape[1] != new.shape[1]:
            raise UsclfError(f"probability pool: pool has {pool.shape[1]} columns, probs have {new.shape[1]}")
        old = pool.detach().to(new)
        new = torch.cat([old, new], dim=0)
    return new[-max_rows:].clone()


def cap_thresholds(
    probs: Tensor, class_prior: Tensor, pos_per: float = 1.0, neg_per: float = 0.998
) -> tuple[Tensor, Tensor]:
    """CAP class-distribution-aware thresholds (Xie et al. 2023; run_CAP.py `pseudo_label`): per class,
    tau_pos = the k_pos-th largest score, k_pos = floor(pos_per * prior * N), and tau_neg = the k_neg-th smallest score,
    k_neg = floor(neg_per * (1 - prior) * N), so positives/negatives match the labelled class proportions.
    Official defaults: --init_pos_per 1.0, --init_neg_per 1.0 clipped to 0.998 (adjust_per). A count of 0 gives
    +inf / -inf (no pseudo-label of that sign); the official int(x)-1 indexing wraps to the extreme score instead.
    Ties at a threshold are all taken (p >= tau_pos / p <= tau_neg, as the official code)."""
    c = _matrix(probs, "CAP thresholds probs").shape[1]
    prior = _vector(class_prior, c, "CAP thresholds class_prior")
    if not (0.0 <= pos_per <= 1.0 and 0.0 <= neg_per <= 1.0):
        raise UsclfError(f"CAP thresholds: pos_per and neg_per must be in [0, 1], got {pos_per}, {neg_per}")
    with _no_autocast(probs), torch.no_grad():
        p = upcast(probs.detach())
        prior = prior.detach().to(p.device, torch.float64)
        if bool(((prior < 0) | (prior > 1)).any()):
            raise UsclfError("CAP thresholds: class_prior must be fractions in [0, 1]")
        n = p.shape[0]
        # float64 counts + 1e-4: 0.29 * 100 and float32 0.29 * 100 still count 29 (the official int() gives 28)
        k_pos = torch.floor(pos_per * prior * n + 1e-4).long().clamp(0, n)
        k_neg = torch.floor(neg_per * (1 - prior) * n + 1e-4).long().clamp(0, n)
        desc = p.sort(dim=0, descending=True).values
        asc = p.sort(dim=0).values
        cols = torch.arange(c, device=p.device)
        inf = torch.full((c,), float("inf"), dtype=p.dtype, device=p.device)
        tau_pos = torch.where(k_pos > 0, desc[(k_pos - 1).clamp_min(0), cols], inf)
        tau_neg = torch.where(k_neg > 0, asc[(k_neg - 1).clamp_min(0), cols], -inf)
    return tau_pos, tau_neg


def cap_onehead_unlabeled(
    logits_weak: Tensor, logits_strong: Tensor, tau_pos: Tensor, tau_neg: Tensor, reduction: str = "mean"
) -> tuple[Tensor, dict[str, Tensor]]:
    """CAP L_u on the sigmoid head (Xie et al. 2023): y = 1 where p~ >= tau_pos (wins a tie with tau_neg, as
    the official pseudo_labels = outputs >= thre), 0 where p~ <= tau_neg, ignored otherwise; BCE on the strong
    logits over assigned entries. Returns (loss, {"mask_rate", "pseudo" (N x C, -1 ignored), "mask" (N x C)})."""
    c = _matrix(logits_weak, "CAP logits_weak").shape[1]
    if _matrix(logits_strong, "CAP logits_strong").shape != logits_weak.shape:
        raise UsclfError(f"CAP: weak {tuple(logits_weak.shape)} and strong {tuple(logits_strong.shape)} differ")
    if reduction not in ("mean", "sum"):
        raise UsclfError(f"CAP: reduction must be 'mean' or 'sum', got {reduction!r}")
    with _no_autocast(logits_strong):
        with torch.no_grad():
            p = torch.sigmoid(upcast(logits_weak.detach()))
            pos = p >= _vector(tau_pos, c, "CAP tau_pos").detach().to(p)
            neg = (p <= _vector(tau_neg, c, "CAP tau_neg").detach().to(p)) & ~pos
            mask = pos | neg
            pseudo = torch.where(mask, pos.to(p.dtype), torch.full_like(p, -1.0))
        s = upcast(logits_strong)
        per = F.binary_cross_entropy_with_logits(s, pos.to(s.dtype), reduction="none") * mask.to(s.dtype)
        # CAP's code SUMS the masked entries (semi_train: (criterion_ub(...) * mask).sum(), likewise L_lb); "mean"
        # divides that sum by all N*C entries (ignored ones count 0), our convention; "sum" is CAP's exact value.
        # CAP's default loss_ub is ASL (gamma_neg 4, clip 0.05); --loss_ub bce is the BCE used here
        loss = per.sum() if reduction == "sum" else per.sum() / per.numel()
    return loss, {"mask_rate": mask.float().mean(), "pseudo": pseudo, "mask": mask}
