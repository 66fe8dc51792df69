"""Evaluation figures: feature embeddings (paper Fig. 2), lambda box plots (Fig. 5), label-fraction
curves with 95 % CIs (Fig. 6), training curves and per-class F1 bars.

Every function takes plain data and writes one PNG. Figures are built with `matplotlib.figure.Figure`
and the Agg canvas directly, so no display and no global pyplot state are involved.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from usclf.errors import UsclfError
from usclf.eval.report import seeds_summary

DPI = 100
REST_COLOR = (0.75, 0.75, 0.75, 1.0)
# Preferred order when these method names appear (paper Fig. 5: PICA baseline first, then LSD).
_METHOD_ORDER = ["PICA", "LSD"]


# ----------------------------------------------------------------------------------------- helpers
def _palette(n: int) -> list[tuple[float, ...]]:
    """n distinct colours: tab10 up to 10, tab20 up to 20, then tab20 + tab20b + tab20c, then hsv."""
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    base = [colormaps[m](i) for m in ("tab20", "tab20b", "tab20c") for i in range(20)]
    if n <= len(base):
        return base[:n]
    return [colormaps["hsv"](i / n) for i in range(n)]


def _save(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    if out.suffix.lower() != ".png":
        raise UsclfError(f"figure path must end in .png: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=DPI, bbox_inches="tight")
    return out


def _need_columns(df: pd.DataFrame, cols: list[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise UsclfError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UsclfError(f"{what}: missing column(s) {missing}; have {list(df.columns)}")
    if df.empty:
        raise UsclfError(f"{what}: the table is empty")


def _finite_scores(df: pd.DataFrame, col: str, what: str) -> np.ndarray:
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(vals).all():
        raise UsclfError(f"{what}: column '{col}' has missing or non-numeric values")
    return vals


def _ordered_methods(methods) -> list[str]:
    uniq = list(dict.fromkeys(str(m) for m in methods))
    first = [m for m in _METHOD_ORDER if m in uniq]
    return first + sorted(m for m in uniq if m not in first)


def label_fraction_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, fraction): n seeds, mean F1, 95 % CI (t-distribution, via `seeds_summary`) - the
    numbers Fig. 6 plots. The CI is NaN where a point has a single seed."""
    _need_columns(df, ["method", "label_fraction", "seed", "f1"], "label-fraction table")
    f1 = _finite_scores(df, "f1", "label-fraction table")
    frac = _finite_scores(df, "label_fraction", "label-fraction table")
    d = pd.DataFrame({"method": df["method"].astype(str), "label_fraction": frac, "seed": df["seed"], "f1": f1})
    dup = d.duplicated(["method", "label_fraction", "seed"])
    if dup.any():
        r = d[dup].iloc[0]
        raise UsclfError(f"label-fraction table: duplicate row for method={r.method} label_fraction={r.label_fraction} "
                         f"seed={r.seed}")
    rows = []
    for (method, fraction), g in d.groupby(["method", "label_fraction"], sort=True):
        st = seeds_summary(g["f1"].tolist())
        rows.append({"method": method, "label_fraction": fraction, "n": st["n"], "mean": st["mean"],
                     "ci_low": st["ci95_low"], "ci_high": st["ci95_high"]})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------- embedding
def embed_2d(features: np.ndarray, method: str = "tsne", seed: int = 0,
             max_points: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Seeded subsample of rows (indices, sorted) and their 2-D coordinates: PCA to <= 50 dims, then
    t-SNE (`method="tsne"`) or the first two principal components (`method="pca"`)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 3 or x.shape[1] < 1:
        raise UsclfError(f"features must be an N x D array with N >= 3, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise UsclfError("features contain NaN or inf")
    if method not in ("tsne", "pca"):
        raise UsclfError(f"unknown embedding method '{method}' (use 'tsne' or 'pca')")
    if max_points < 3:
        raise UsclfError(f"max_points must be >= 3, got {max_points}")
    n = x.shape[0]
    idx = np.arange(n)
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    x = x[idx]
    n_comp = min(50, x.shape[0], x.shape[1])
    if n_comp >= 2:
        x = PCA(n_components=n_comp, random_state=seed).fit_transform(x).astype(np.float32)
    if method == "pca" or x.shape[1] < 2:
        xy = np.zeros((x.shape[0], 2), dtype=np.float32)
        xy[:, : min(2, x.shape[1])] = x[:, :2]
        return idx, xy
    # Perplexity must stay below N; 30 is sklearn's default and the usual choice.
    perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
              random_state=seed).fit_transform(x)
    return idx, xy.astype(np.float32)


def plot_embedding(features: np.ndarray, clusters: np.ndarray, label_names: list[str], out_png: str | Path,
                   method: str = "tsne", seed: int = 0, max_points: int = 3000, title: str = "") -> Path:
    """Two panels side by side: the 2-D embedding coloured by cluster and by label set (top 12 + rest)."""
    feats = np.asarray(features)
    clusters = np.asarray(clusters).ravel()
    names = [str(s) for s in label_names]
    if feats.ndim != 2 or not (len(clusters) == len(names) == feats.shape[0]):
        raise UsclfError(f"plot_embedding: features {feats.shape}, {len(clusters)} clusters and "
                         f"{len(names)} label names must describe the same rows")
    idx, xy = embed_2d(feats, method=method, seed=seed, max_points=max_points)
    cl = clusters[idx]
    lab = [names[i] for i in idx]

    fig = Figure(figsize=(15, 6.5))
    ax_c, ax_l = fig.subplots(1, 2)
    size = 10 if len(idx) <= 1500 else 5

    ucl = sorted(set(cl.tolist()))
    colors = _palette(len(ucl))
    for c, col in zip(ucl, colors):
        m = cl == c
        ax_c.scatter(xy[m, 0], xy[m, 1], s=size, color=col, label=str(c), alpha=0.8, linewidths=0)
    ax_c.set_title(f"coloured by cluster ({len(ucl)} clusters)")
    if len(ucl) <= 30:
        ax_c.legend(title="cluster", fontsize=7, title_fontsize=8, markerscale=2, ncol=2 if len(ucl) > 15 else 1,
                    loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)

    counts = Counter(lab)
    top = [name for name, _ in counts.most_common(12)]
    lab_arr = np.array(lab, dtype=object)
    rest = ~np.isin(lab_arr, top)
    if rest.any():
        ax_l.scatter(xy[rest, 0], xy[rest, 1], s=size, color=REST_COLOR, alpha=0.8, linewidths=0,
                     label=f"rest ({int(rest.sum())})")
    for name, col in zip(top, _palette(len(top))):
        m = lab_arr == name
        ax_l.scatter(xy[m, 0], xy[m, 1], s=size, color=col, alpha=0.8, linewidths=0,
                     label=f"{name} ({counts[name]})")
    ax_l.set_title(f"coloured by label set ({len(counts)} sets)")
    handles, texts = ax_l.get_legend_handles_labels()
    if rest.any():  # drawn first (underneath), listed last
        handles, texts = handles[1:] + handles[:1], texts[1:] + texts[:1]
    ax_l.legend(handles, texts, title="label set (n)", fontsize=7, title_fontsize=8, markerscale=2, loc="center left",
                bbox_to_anchor=(1.0, 0.5), frameon=False)

    axis = "t-SNE" if method == "tsne" else "PC"
    for ax in (ax_c, ax_l):
        ax.set_xlabel(f"{axis} 1")
        ax.set_ylabel(f"{axis} 2")
        ax.set_xticks([])
        ax.set_yticks([])
    shown = f"{len(idx)} of {feats.shape[0]} points" if len(idx) < feats.shape[0] else f"{len(idx)} points"
    fig.suptitle(f"{title + ': ' if title else ''}{axis} of features ({shown})")
    return _save(fig, out_png)


# ------------------------------------------------------------------------------------ study figures
def plot_label_fraction_curves(df: pd.DataFrame, out_png: str | Path, title: str = "") -> Path:
    """Paper Fig. 6: mean weighted F1 vs label fraction per method, with t-distribution CI bands."""
    summ = label_fraction_summary(df)
    as_percent = summ["label_fraction"].max() <= 1.0
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    methods = _ordered_methods(summ["method"])
    for method, col in zip(methods, _palette(len(methods))):
        s = summ[summ["method"] == method].sort_values("label_fraction")
        x = s["label_fraction"].to_numpy() * (100.0 if as_percent else 1.0)
        mean, lo, hi = s["mean"].to_numpy(), s["ci_low"].to_numpy(), s["ci_high"].to_numpy()
        has_ci = np.isfinite(lo)
        yerr = np.vstack([np.where(has_ci, mean - lo, 0.0), np.where(has_ci, hi - mean, 0.0)])
        n_seeds = "/".join(str(v) for v in sorted(set(s["n"].tolist())))
        ax.errorbar(x, mean, yerr=yerr, color=col, marker="o", capsize=4, lw=1.8,
                    label=f"{method} (n={n_seeds})")
        if has_ci.sum() >= 2:
            ax.fill_between(x[has_ci], lo[has_ci], hi[has_ci], color=col, alpha=0.15, linewidth=0)
    xs = np.sort(summ["label_fraction"].unique()) * (100.0 if as_percent else 1.0)
    if xs.min() > 0 and xs.max() / xs.min() >= 5:
        ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{v:g}" for v in xs])
    ax.minorticks_off()
    ax.set_xlabel("labelled images used (%)" if as_percent else "label fraction")
    ax.set_ylabel("F1-score, weighted average")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or "Weighted F1 vs label fraction (mean, 95% CI)")
    return _save(fig, out_png)


def plot_lambda_boxplot(df: pd.DataFrame, out_png: str | Path, title: str = "") -> Path:
    """Paper Fig. 5: box plots of weighted F1 per lambda, methods side by side, seeds as dots."""
    _need_columns(df, ["method", "lam", "seed", "f1"], "lambda table")
    f1 = _finite_scores(df, "f1", "lambda table")
    lam = _finite_scores(df, "lam", "lambda table")
    d = pd.DataFrame({"method": df["method"].astype(str), "lam": lam, "f1": f1})
    lams = sorted(d["lam"].unique())
    methods = _ordered_methods(d["method"])
    width = 0.8 / len(methods)
    rng = np.random.default_rng(0)  # jitter only, fixed so the figure is reproducible

    fig = Figure(figsize=(max(6.0, 1.4 * len(lams) + 2), 5))
    ax = fig.subplots()
    for j, (method, col) in enumerate(zip(methods, _palette(len(methods)))):
        pos, data = [], []
        for i, lv in enumerate(lams):
            vals = d.loc[(d["method"] == method) & (d["lam"] == lv), "f1"].to_numpy()
            if len(vals):
                pos.append(i + (j - (len(methods) - 1) / 2) * width)
                data.append(vals)
        if not data:
            continue
        ax.boxplot(data, positions=pos, widths=width * 0.85, patch_artist=True, manage_ticks=False,
                   boxprops={"facecolor": (*col[:3], 0.35), "edgecolor": col},
                   medianprops={"color": col, "lw": 2}, whiskerprops={"color": col},
                   capprops={"color": col}, flierprops={"markeredgecolor": col, "markersize": 4})
        for p, vals in zip(pos, data):
            ax.scatter(p + rng.uniform(-width * 0.15, width * 0.15, len(vals)), vals, s=12, color=col,
                       zorder=3, linewidths=0)
        ax.plot([], [], color=col, lw=8, alpha=0.5, label=method)
    ax.set_xticks(range(len(lams)))
    ax.set_xticklabels([f"{v:g}" for v in lams])
    ax.set_xlim(-0.6, len(lams) - 0.4)
    ax.set_xlabel("λ (weight of the cluster-size term)")
    ax.set_ylabel("F1-score, weighted average")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title or "Sensitivity to λ (one dot per seed)")
    return _save(fig, out_png)


# --------------------------------------------------------------------------------- training / report
def _panel_name(key: str) -> str:
    for prefix in ("train_", "val_", "train/", "val/"):
        if key.startswith(prefix) and len(key) > len(prefix):
            return key[len(prefix):]
    return key


def plot_training_curves(history: dict[str, list[float]], out_png: str | Path, xlabel: str = "epoch",
                         title: str = "") -> Path:
    """One panel per metric; train_X and val_X share the panel X. Non-finite values show as gaps."""
    if not isinstance(history, dict):
        raise UsclfError(f"training history must be a dict of lists, got {type(history).__name__}")
    series = {}
    for k, v in history.items():
        try:
            arr = np.asarray(list(v), dtype=float).ravel()
        except (TypeError, ValueError):
            raise UsclfError(f"training history '{k}' is not a list of numbers") from None
        if arr.size:
            series[str(k)] = arr
    if not series:
        raise UsclfError("training history is empty: nothing to plot")
    panels: dict[str, list[str]] = {}
    for k in series:
        panels.setdefault(_panel_name(k), []).append(k)
    n = len(panels)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(4.6 * ncol, 3.4 * nrow))
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).ravel()
    for ax, (panel, keys) in zip(axes, panels.items()):
        for k, col in zip(keys, _palette(len(keys))):
            y = np.where(np.isfinite(series[k]), series[k], np.nan)
            x = np.arange(1, len(y) + 1)
            ax.plot(x, y, color=col, marker="o" if len(y) <= 30 else None, ms=3, lw=1.5, label=k)
        ax.set_title(panel)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title or "Training curves")
    fig.tight_layout()
    return _save(fig, out_png)


def plot_per_class_f1(report_df: pd.DataFrame, out_png: str | Path, title: str = "") -> Path:
    """Horizontal bars of F1 per class (index = class names) with the averages in a distinct colour."""
    if not isinstance(report_df, pd.DataFrame) or report_df.empty:
        raise UsclfError("per-class report must be a non-empty DataFrame")
    col = "f1" if "f1" in report_df.columns else "f1-score" if "f1-score" in report_df.columns else None
    if col is None:
        raise UsclfError(f"per-class report has no 'f1' column; have {list(report_df.columns)}")
    f1 = _finite_scores(report_df, col, "per-class report")
    names = [str(i) for i in report_df.index]
    is_avg = np.array(["avg" in s.lower() for s in names])
    scale = 100.0 if f1.max() > 1.0 else 1.0
    support = report_df["support"].to_numpy() if "support" in report_df.columns else None

    fig = Figure(figsize=(7.5, 0.45 * len(names) + 1.4))
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    colors = [colormaps["tab10"](1) if a else colormaps["tab10"](0) for a in is_avg]
    ax.barh(y, f1, color=colors, height=0.7)
    for yi, v, i in zip(y, f1, range(len(names))):
        txt = f"{v:.3f}" if scale == 1.0 else f"{v:.1f}"
        if support is not None:
            txt += f"  (n={int(support[i])})"
        ax.text(v + 0.01 * scale, yi, txt, va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.set_xlim(0, 1.25 * scale)
    ax.set_xticks(np.linspace(0, scale, 6))
    ax.set_xlabel("F1-score" + (" (%)" if scale == 100.0 else ""))
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(title or "Per-class F1")
    return _save(fig, out_png)
