"""What the pseudo-labels are doing, measured against the truth where it is known (simulated data).

Semi-supervised methods never see the labels of unlabelled images; this module does, only to report.
Per step and class it counts the accepted positive pseudo-labels, how many of them are right (precision)
and how many of the truly positive unlabelled images in the batch got one (recall); and every accepted
entry, positive or negative, with how many of them are right (entry accuracy: a two-head label set "liver"
on a liver + gallbladder frame has a right "liver" and a wrong "no gallbladder", which precision never sees).
The share of each class among the accepted positives is set beside its share among the labelled set's
positives and among the truly positive unlabelled entries: a pseudo-labeller that favours a class shows.
Counts are kept per step so windows can be summed exactly (a ratio of sums, never a mean of per-step ratios).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.cache import MANIFEST

# per class: accepted positives, right ones, truth positives in the batch, entries with known truth, accepted
# positives with known truth, accepted entries (positive or negative), of them with known truth, right ones
COUNTS = ("accepted", "tp", "truth_pos", "known", "accepted_known", "entries", "judged", "right")
TABLE = ["step", "class", "accepted", "precision", "recall", "mask_rate",  # the first columns keep their order
         "entries", "entry_acc", "tp", "truth_pos", "judged", "right", "pl_share", "truth_share", "labeled_share"]


def truth_labels(ds) -> np.ndarray:
    """Label matrix (rows of `ds.manifest` x C, NaN where unknown) from the ingest manifest, whose labels
    the split strips from unlabelled rows. Only for diagnostics: never passed to a training loss."""
    path = Path(ds.root) / MANIFEST
    if not path.is_file():
        return np.full((len(ds.manifest), len(ds.classes)), np.nan)
    full = pd.read_csv(path, dtype={"image_id": str}, usecols=lambda c: c == "image_id" or c in ds.classes)
    full = full.drop_duplicates("image_id").set_index("image_id")
    y = full.reindex(ds.manifest["image_id"].astype(str))[list(ds.classes)]
    return y.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)


class PseudoLabelDiagnostics:
    """Accumulates per-step, per-class pseudo-label counts; `state_dict` makes it resume exactly."""

    def __init__(self, classes: list[str], truth: np.ndarray | None, labeled: np.ndarray | None = None):
        self.classes = list(classes)
        self.truth = None if truth is None or np.isnan(truth).all() else truth
        # each class's share of the labelled set's positive labels (what the pseudo-label shares are set beside)
        pos = np.zeros(len(self.classes)) if labeled is None or not len(labeled) else np.asarray(labeled).sum(0)
        self.labeled_share = pos / pos.sum() if pos.sum() else np.full(len(self.classes), np.nan)
        self.steps: list[int] = []
        self.mask_rate: list[float] = []
        self.counts: list[np.ndarray] = []  # per step: len(COUNTS) x C

    def update(self, step: int, pseudo: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> dict[str, float]:
        """Record one step: `pseudo` N x C in {0, 1}, `mask` N x C bool (accepted entries), `rows` N manifest rows.
        Returns scalar metrics for the step log (empty besides the accepted count when no truth is known)."""
        p = pseudo.detach().cpu().numpy() > 0.5
        m = mask.detach().cpu().numpy().astype(bool)
        acc_pos = m & p
        out = {"pl/accepted_pos": float(acc_pos.sum())}
        if self.truth is None:
            zero = np.zeros(p.shape[1])
            counts = np.stack([acc_pos.sum(0), zero, zero, zero, zero, m.sum(0), zero, zero])
        else:
            t = self.truth[rows.detach().cpu().numpy()]
            known = ~np.isnan(t)
            pos = known & (np.nan_to_num(t) > 0.5)
            tp = acc_pos & pos
            judged = m & known
            right = judged & (p == pos)
            # precision counts only accepted entries whose truth is known (real data: labelled frames only)
            counts = np.stack([acc_pos.sum(0), tp.sum(0), pos.sum(0), known.sum(0), (acc_pos & known).sum(0),
                               m.sum(0), judged.sum(0), right.sum(0)])
            out.update({"pl/precision": _ratio(tp.sum(), (acc_pos & known).sum()), "pl/recall": _ratio(tp.sum(), pos.sum()),
                        "pl/accuracy": _ratio(right.sum(), judged.sum())})
        self.steps.append(int(step))
        self.mask_rate.append(float(m.any(1).mean()) if len(m) else 0.0)
        self.counts.append(counts.astype(np.int64))
        return out

    def state_dict(self) -> dict:
        return {"steps": list(self.steps), "mask_rate": list(self.mask_rate),
                "counts": [c.tolist() for c in self.counts]}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.mask_rate = list(state["steps"]), list(state["mask_rate"])
        self.counts = [_pad(np.asarray(c, dtype=np.int64)) for c in state["counts"]]

    def table(self, window: int) -> pd.DataFrame:
        """One row per window of `window` steps and class (columns `TABLE`): accepted positives, precision,
        recall, mask rate, accepted entries and their accuracy, the counts behind the ratios, and the class's
        share of the accepted positives beside its share of the truly positive entries and of the labelled
        set's positives. Ratios against the truth are NaN where it is unknown."""
        rows = []
        if not self.counts:
            return pd.DataFrame(columns=TABLE)
        steps, c = np.asarray(self.steps), np.stack(self.counts)
        truth = self.truth is not None
        for start in range(0, len(steps), max(1, window)):
            sl = slice(start, start + window)
            s = c[sl].sum(0)
            for j, name in enumerate(self.classes):
                rows.append({"step": int(steps[sl][-1]) + 1, "class": name, "accepted": int(s[0, j]),
                             "precision": _ratio(s[1, j], s[4, j]) if truth else np.nan,
                             "recall": _ratio(s[1, j], s[2, j]) if truth else np.nan,
                             "mask_rate": float(np.mean(self.mask_rate[sl])),
                             "entries": int(s[5, j]), "entry_acc": _ratio(s[7, j], s[6, j]) if truth else np.nan,
                             "tp": int(s[1, j]), "truth_pos": int(s[2, j]), "judged": int(s[6, j]),
                             "right": int(s[7, j]), "pl_share": _ratio(s[0, j], s[0].sum()),
                             "truth_share": _ratio(s[2, j], s[2].sum()) if truth else np.nan,
                             "labeled_share": float(self.labeled_share[j])})
        return pd.DataFrame(rows, columns=TABLE)

    def write(self, out_dir: str | Path, window: int, title: str = "") -> list[Path]:
        """`pseudo_labels.csv` and `pseudo_labels.png` in `out_dir`; returns the written paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tab = self.table(window)
        csv = out_dir / "pseudo_labels.csv"
        tab.to_csv(csv, index=False, float_format="%.4f")
        png = out_dir / "pseudo_labels.png"
        _plot(tab, png, title, self.truth is not None)
        return [csv, png]


def _ratio(a, b) -> float:
    return float(a) / float(b) if b else float("nan")


def _pad(c: np.ndarray) -> np.ndarray:
    """Counts of a checkpoint written before the entry counts existed: those rows are 0 (their ratios NaN)."""
    return np.vstack([c, np.zeros((len(COUNTS) - len(c), c.shape[1]), dtype=np.int64)]) if len(c) < len(COUNTS) else c


def window_summary(tab: pd.DataFrame) -> dict[str, float]:
    """Micro-averaged (ratio of summed counts over classes) precision, recall and entry accuracy of one window of
    `table`, and how far the accepted positives' class shares are from the truth's (total variation distance,
    0 = same shares, 1 = disjoint). NaN where the counts are missing (a file from before they were written)."""
    def col(name):
        return tab[name].sum() if name in tab.columns else np.nan

    out = {"recall": _ratio(col("tp"), col("truth_pos")) if "tp" in tab.columns else np.nan,
           "entry_acc": _ratio(col("right"), col("judged")) if "right" in tab.columns else np.nan,
           "share_gap": np.nan}
    if {"accepted", "truth_pos"} <= set(tab.columns) and tab["accepted"].sum() and tab["truth_pos"].sum():
        a, t = tab["accepted"] / tab["accepted"].sum(), tab["truth_pos"] / tab["truth_pos"].sum()
        out["share_gap"] = float(0.5 * (a - t).abs().sum())
    return {k: float(v) for k, v in out.items()}


def _plot(tab: pd.DataFrame, path: Path, title: str, with_truth: bool) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["accepted", "precision", "recall", "entry_acc", "pl_share"] if with_truth else ["accepted", "pl_share"]
    titles = {"accepted": "accepted positives per class", "precision": "precision per class (vs truth)",
              "recall": "recall per class (vs truth)",
              "entry_acc": "entry accuracy per class (vs truth)\naccepted positives and negatives",
              "pl_share": "share of accepted positives per class\n(dashed: truth, dotted: labelled set)"}
    n = len(panels) + 1
    rows = 2 if n > 3 else 1
    fig, axes = plt.subplots(rows, -(-n // rows), figsize=(4.2 * -(-n // rows), 3.4 * rows), squeeze=False)
    axes = axes.ravel()
    first = tab.drop_duplicates("step")
    axes[0].plot(first["step"], first["mask_rate"], color="k")
    axes[0].set(title="mask rate (rows with a pseudo-label)", xlabel="step", ylim=(0, 1.02))
    colours = {}
    for ax, col in zip(axes[1:], panels):
        for name, g in tab.groupby("class", sort=False):
            line, = ax.plot(g["step"], g[col], marker=".", label=name, color=colours.get(name))
            colours[name] = line.get_color()
            if col == "pl_share":  # the class's share among truly positive entries / the labelled set's labels
                if with_truth:
                    ax.plot(g["step"], g["truth_share"], ls="--", color=colours[name], lw=1)
                ax.axhline(g["labeled_share"].iloc[0], ls=":", color=colours[name], lw=1)
        ax.set_title(titles[col], fontsize=9)
        ax.set_xlabel("step")
        if col != "accepted":
            ax.set_ylim(-0.02, 1.02)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(title or "pseudo-labels", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
