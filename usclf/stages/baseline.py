"""`usclf baseline`: a classic deep-clustering baseline on a dataset, scored like every usclf model.

The method clusters the images of `fit_splits` (the papers cluster all images together). Clustering
metrics (ACC, NMI, ARI, ...) are computed on every labelled fitted image against its label set (its
class, for single-label data); when the dev and test splits were fitted, Algorithm 1 matches clusters to
labels on dev, per-class thresholds are chosen on dev and the test report is the one of `usclf evaluate`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..baselines.config import BaselineConfig
from ..baselines.registry import FitContext, get_baseline
from ..config import dump_config, to_dict
from ..data.adapters import from_npz
from ..data.cache import CachedDataset, open_dataset
from ..errors import UsclfError
from ..paths import check_out_dir
from ..eval.clustering import clustering_metrics, combination_vocabulary
from ..eval.report import WEIGHTED
from ..models.modelfile import data_hash
from ..tracking import Tracker
from ..train.distributed import resolve_device, seed_everything
from .scoring import class_scores, fit_matching, format_report, thresholds_and_report

CLUSTER_KEYS = ("acc", "nmi", "ari", "homogeneity", "purity")


def open_baseline_data(cfg: BaselineConfig) -> tuple[CachedDataset, str]:
    """A dataset folder (with its split manifest when present) or a .npz adapted into OUT/dataset."""
    src = Path(cfg.data)
    if not cfg.data or not src.exists():
        raise UsclfError(f"data not found: '{cfg.data}' (a `usclf ingest` folder or a MedMNIST/USPS/MNIST .npz)")
    if src.suffix == ".npz":
        root = Path(cfg.out) / "dataset"
        meta = root / "dataset.json"
        if not meta.is_file() or json.loads(meta.read_text()).get("source") != src.name:
            from_npz(src, root)   # adapted once per OUT; another .npz in the same OUT is adapted again
        src = root
    split = src / f"manifest_split_seed{cfg.split_seed}.csv"
    manifest = split if split.is_file() else None
    ds = open_dataset(src, manifest)
    return ds, data_hash(manifest or src / "manifest.csv", len(ds.images))


def _fit_rows(ds: CachedDataset, splits: list[str]) -> np.ndarray:
    if "all" in splits:
        return np.arange(len(ds.manifest))
    rows = np.flatnonzero(ds.manifest["split"].isin(splits).to_numpy())
    if len(rows) == 0:
        raise UsclfError(f"no images in split(s) {', '.join(splits)}; splits here: "
                         f"{', '.join(sorted(ds.manifest['split'].unique()))}")
    return rows


def _default_k(Y: np.ndarray, labelled: np.ndarray) -> int:
    if not labelled.any():
        raise UsclfError("no labelled image among the fitted ones: set k explicitly (k=...)")
    return len(combination_vocabulary(Y[labelled].astype(int))[0])


def baseline(cfg: BaselineConfig, tracking_uri: str | None = None, resume: bool = False,
             parent_run_id: str | None = None) -> dict:
    """Fit the configured baseline and score it; returns {'metrics', 'report' (or None), 'out', ...}."""
    method = get_baseline(cfg)
    ds, dhash = open_baseline_data(cfg)
    rows = _fit_rows(ds, list(cfg.fit_splits))
    images = np.asarray(ds.images[ds.manifest["cache_row"].to_numpy()[rows]])
    Y = ds.labels(rows)
    labelled = ~np.isnan(Y).any(1)
    k = cfg.k if cfg.k is not None else _default_k(Y, labelled)
    if k < 2:
        raise UsclfError(f"k must be >= 2, got {k}")
    method.check(images, k)
    out = check_out_dir(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    params = {"stage": "baseline", "method": cfg.method, "K": k, "seed": cfg.seed, "data_hash": dhash,
              "n_images": len(rows), "config": to_dict(cfg)}
    with Tracker(tracking_uri, cfg.experiment, f"baseline-{cfg.method}-seed{cfg.seed}", params,
                 {"stage": "baseline", "method": cfg.method}, parent_run_id) as run:
        t0 = time.time()
        fit = method.fit(images, FitContext(out, k, cfg.seed, device, run, cfg.progress, resume, ds, rows))
        seconds = time.time() - t0
        P = np.asarray(fit.P, dtype=np.float64)   # K columns, or more for over-clustering methods
        if P.ndim != 2 or P.shape[0] != len(rows) or P.shape[1] < 2 or not np.isfinite(P).all():
            raise UsclfError(f"baseline {cfg.method} returned assignments of shape {P.shape} for {len(rows)} images")
        clusters = P.argmax(1)
        metrics = {f"all/{key}": v for key, v in clustering_metrics(
            Y[labelled].astype(int), clusters[labelled], fit.features[labelled]).items()}
        metrics.update({f"fit/{key}": float(v) for key, v in fit.info.items()})
        metrics["fit/seconds"] = seconds
        metrics["fit/clusters"] = float(P.shape[1])
        report = _matched_report(ds, rows, P, Y, cfg)
        if report is not None:
            metrics.update({"test/weighted_f1": float(report.loc[WEIGHTED, "f1"])})
        pd.DataFrame({"cache_row": ds.manifest["cache_row"].to_numpy()[rows], "split": ds.manifest["split"].to_numpy()[rows],
                      "cluster": clusters, "confidence": P.max(1)}).to_csv(out / "assignments.csv", index=False)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if report is not None:
            report.to_csv(out / "report.csv", index_label="class")
        if cfg.figures:
            _figure(fit.features[labelled], clusters[labelled], Y[labelled], ds.classes, out, cfg.method, cfg.max_points)
        run.log_metrics(metrics)
        for name in ("config.yaml", "assignments.csv", "metrics.json", "report.csv"):
            if (out / name).is_file():
                run.log_artifact(out / name)
        if (out / "figures").is_dir():
            run.log_artifacts(out / "figures", "figures")
    if report is not None:
        print(format_report(report, f"test report ({cfg.method}; clusters matched and thresholds chosen on "
                                    f"{cfg.dev_split})"))
    print(f"{cfg.method} (K={k}) on {int(labelled.sum())} labelled of {len(rows)} images: "
          + ", ".join(f"{key} {metrics['all/' + key]:.4f}" for key in CLUSTER_KEYS) + f"  ({seconds:.0f} s)")
    print(f"written to {out} (assignments.csv, metrics.json{', report.csv' if report is not None else ''})")
    return {"metrics": metrics, "report": report, "out": out, "assignments": P, "rows": rows}


def _matched_report(ds, rows, P, Y, cfg) -> pd.DataFrame | None:
    """Algorithm 1 + thresholds on dev, report on test, when both were fitted and are labelled."""
    split = ds.manifest["split"].to_numpy()[rows]
    labelled = ~np.isnan(Y).any(1)
    dev, test = labelled & (split == cfg.dev_split), labelled & (split == cfg.test_split)
    if not dev.any() or not test.any():
        return None
    V = fit_matching("cluster", P[dev], Y[dev])
    s_dev, s_test = class_scores("cluster", P[dev], V), class_scores("cluster", P[test], V)
    return thresholds_and_report(Y[dev], s_dev, Y[test], s_test, ds.classes)[1]


def _figure(features, clusters, Y, classes, out: Path, method: str, max_points: int) -> None:
    from ..eval.plots import plot_embedding

    names = ["+".join(c for c, v in zip(classes, r) if v) or "none" for r in Y.astype(int)]
    plot_embedding(features, clusters, names, out / "figures" / "embedding.png", method="tsne",
                   max_points=max_points, title=f"{method}: clustered features")

