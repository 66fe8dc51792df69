"""What the pseudo-labels are doing, measured against the truth where it is known (simulated data).

Semi-supervised methods never see the labels of unlabelled images; this module does, only to report.
Per step and class it counts the accepted positive pseudo-labels, how many of them are right (precision)
and how many of the truly positive unlabelled images in the batch got one (recall). Counts are kept per
step so windows can be summed exactly (a ratio of sums, never a mean of noisy per-step ratios).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.cache import MANIFEST

COUNTS = ("accepted", "tp", "truth_pos", "known", "accepted_known")


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

    def __init__(self, classes: list[str], truth: np.ndarray | None):
        self.classes = list(classes)
        self.truth = None if truth is None or np.isnan(truth).all() else truth
        self.steps: list[int] = []
        self.mask_rate: list[float] = []
        self.counts: list[np.ndarray] = []  # per step: 4 x C (COUNTS order)

    def update(self, step: int, pseudo: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> dict[str, float]:
        """Record one step: `pseudo` N x C in {0, 1}, `mask` N x C bool (accepted entries), `rows` N manifest rows.
        Returns scalar metrics for the step log (empty besides the accepted count when no truth is known)."""
        p = pseudo.detach().cpu().numpy() > 0.5
        m = mask.detach().cpu().numpy().astype(bool)
        acc_pos = m & p
        out = {"pl/accepted_pos": float(acc_pos.sum())}
        if self.truth is None:
            counts = np.vstack([acc_pos.sum(0), np.zeros((4, p.shape[1]))])
        else:
            t = self.truth[rows.detach().cpu().numpy()]
            known = ~np.isnan(t)
            pos = known & (np.nan_to_num(t) > 0.5)
            tp = acc_pos & pos
            # precision counts only accepted entries whose truth is known (real data: labelled frames only)
            counts = np.stack([acc_pos.sum(0), tp.sum(0), pos.sum(0), known.sum(0), (acc_pos & known).sum(0)])
            right = (m & known & (p == pos)).sum()
            judged = (m & known).sum()
            out.update({"pl/precision": _ratio(tp.sum(), (acc_pos & known).sum()), "pl/recall": _ratio(tp.sum(), pos.sum()),
                        "pl/accuracy": _ratio(right, judged)})
        self.steps.append(int(step))
        self.mask_rate.append(float(m.any(1).mean()) if len(m) else 0.0)
        self.counts.append(counts.astype(np.int64))
        return out

    def state_dict(self) -> dict:
        return {"steps": list(self.steps), "mask_rate": list(self.mask_rate),
                "counts": [c.tolist() for c in self.counts]}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.mask_rate = list(state["steps"]), list(state["mask_rate"])
        self.counts = [np.asarray(c, dtype=np.int64) for c in state["counts"]]

    def table(self, window: int) -> pd.DataFrame:
        """One row per window of `window` steps and class: accepted, precision, recall (NaN if unknown)."""
        rows = []
        if not self.counts:
            return pd.DataFrame(columns=["step", "class", "accepted", "precision", "recall", "mask_rate"])
        steps, c = np.asarray(self.steps), np.stack(self.counts)
        for start in range(0, len(steps), max(1, window)):
            sl = slice(start, start + window)
            s = c[sl].sum(0)
            for j, name in enumerate(self.classes):
                rows.append({"step": int(steps[sl][-1]) + 1, "class": name, "accepted": int(s[0, j]),
                             "precision": _ratio(s[1, j], s[4, j]) if self.truth is not None else np.nan,
                             "recall": _ratio(s[1, j], s[2, j]) if self.truth is not None else np.nan,
                             "mask_rate": float(np.mean(self.mask_rate[sl]))})
        return pd.DataFrame(rows)

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


def _plot(tab: pd.DataFrame, path: Path, title: str, with_truth: bool) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["accepted", "precision", "recall"] if with_truth else ["accepted"]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 3.4))
    first = tab.drop_duplicates("step")
    axes[0].plot(first["step"], first["mask_rate"], color="k")
    axes[0].set(title="mask rate (rows with a pseudo-label)", xlabel="step", ylim=(0, 1.02))
    for ax, col in zip(axes[1:], panels):
        for name, g in tab.groupby("class", sort=False):
            ax.plot(g["step"], g[col], marker=".", label=name)
        ax.set(title=f"{col} per class" + (" (vs truth)" if col != "accepted" else " positives"), xlabel="step")
        if col != "accepted":
            ax.set_ylim(-0.02, 1.02)
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(title or "pseudo-labels", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
