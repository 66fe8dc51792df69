"""`usclf evaluate`: score any usclf model on the split dataset (paper Sec. 3.2, Tables 1-2, Fig. 2).

Clustering models: Algorithm 1 matching on the dev (validation) set, per-class F1 thresholds on dev,
test report, clustering metrics against label sets, t-SNE, cluster gallery. Classifiers: thresholds on
dev, test report, t-SNE. Everything is written to `out` and logged to MLflow; `out/model.pt` is the model
with its matching and thresholds, ready for `usclf predict`. finetune and semisup close through here with
the model in memory: thresholds are chosen once and their `model.pt` is written once, predict-ready.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import dump_config, to_dict
from ..data.transforms import AugmentConfig
from ..errors import UsclfError
from ..paths import check_out_dir
from ..eval.clustering import clustering_metrics
from ..eval.gallery import cluster_gallery
from ..eval.inference import infer
from ..eval.plots import plot_embedding, plot_per_class_f1
from ..eval.report import WEIGHTED
from ..models.modelfile import Preprocess, load_model_file, save_model_file, update_model_info
from ..tracking import Tracker
from ..train.loop import resolve_device
from .common import DataConfig, open_split, rows_in
from .scoring import format_report, head_kind, thresholds_and_report


@dataclass
class EvaluateConfig:
    """Evaluation of a model file on the dataset's dev and test splits."""
    model: str = ""                     # model file from pretrain / finetune / semisup
    out: str = "runs/evaluate"
    dev_split: str = "val"              # paper Sec. 2.2.3: matching + thresholds on the development set
    test_split: str = "test"
    soft: bool = False                  # Algorithm 1 uses the argmax cluster; soft = sum_k p_k v_k
    embedding: str = "tsne"             # tsne | pca
    max_points: int = 2000              # t-SNE subsample (seconds on CPU)
    gallery_per_cluster: int = 12
    figures: bool = True                # t-SNE + per-class bars + gallery (off in multi-run studies for speed)
    device: str = "auto"
    experiment: str = "usclf-evaluate"
    data: DataConfig = field(default_factory=DataConfig)


def _label_names(Y: np.ndarray, classes: list[str]) -> list[str]:
    return ["+".join(c for c, v in zip(classes, row) if v) or "none" for row in Y.astype(int)]


def evaluate(cfg: EvaluateConfig, tracking_uri: str | None = None, progress: bool = True,
             parent_run_id: str | None = None, tracker: Tracker | None = None,
             loaded: tuple | None = None) -> dict:
    """Evaluate `cfg.model`; returns {'report': DataFrame, 'metrics': dict, 'model': Path, ...}.

    With `tracker` (an open run, e.g. the training run) metrics and artefacts go there instead of a new run.
    With `loaded` = (model, ModelInfo) the model in memory is evaluated and written once, predict-ready, to
    `cfg.model` (how the training stages close); otherwise `out/model.pt` is the file with its thresholds.
    """
    if not cfg.model:
        raise UsclfError("no model given: set --model PATH")
    check_out_dir(cfg.out)
    device = resolve_device(cfg.device)
    model, info = (loaded[0].to(device).eval(), loaded[1]) if loaded else load_model_file(cfg.model, device)
    ds, dhash = open_split(cfg.data)
    if info.classes and info.classes != list(ds.classes):
        raise UsclfError(f"model classes {info.classes} differ from the dataset's {ds.classes}")
    kind = head_kind(model.head.kind)
    aug = AugmentConfig(**(info.preprocess or Preprocess()).augment_kwargs(int(ds.meta["image_size"])))
    dev, test = rows_in(ds, [cfg.dev_split], "dev images"), rows_in(ds, [cfg.test_split], "test images")
    kw = dict(aug=aug, batch_size=cfg.data.batch_size, workers=cfg.data.workers, device=device, progress=progress)
    r_dev, r_test = infer(model, ds, dev, desc="dev", **kw), infer(model, ds, test, desc="test", **kw)
    y_dev, y_test = ds.labels(dev), ds.labels(test)
    V = kind.fit_matching(r_dev["out"], y_dev)
    s_dev, s_test = kind.scores(r_dev["out"], V, cfg.soft), kind.scores(r_test["out"], V, cfg.soft)
    th, report = thresholds_and_report(y_dev, s_dev, y_test, s_test, ds.classes)

    out = Path(cfg.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    report.to_csv(out / "report.csv", index_label="class")
    names = _label_names(y_test, ds.classes)
    clusters, confidence = kind.clusters(r_test, s_test, th)
    metrics = {f"test/{k}": v for k, v in clustering_metrics(y_test.astype(int), clusters, r_test["features"]).items()}
    metrics.update({"test/weighted_f1": float(report.loc[WEIGHTED, "f1"]),
                    "test/weighted_precision": float(report.loc[WEIGHTED, "precision"]),
                    "test/weighted_recall": float(report.loc[WEIGHTED, "recall"])})
    metrics.update({f"test/f1_{c}": float(report.loc[c, "f1"]) for c in ds.classes})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "thresholds.json").write_text(json.dumps(dict(zip(ds.classes, map(float, th))), indent=2))
    if cfg.figures:
        _figures(cfg, info, ds, test, r_test, clusters, confidence, names, report, V, y_test, kind, out)
    found = {"thresholds": [float(t) for t in th], "matching": V.tolist() if V is not None else [],
             "soft_matching": cfg.soft}
    model_out = (save_model_file(cfg.model, model, replace(info, **found)) if loaded
                 else update_model_info(cfg.model, out / "model.pt", **found))
    params = {"stage": "evaluate", "model": str(cfg.model), "head": kind.name, "method": info.method,
              "data_hash": dhash, "n_dev": len(dev), "n_test": len(test), "config": to_dict(cfg)}
    if tracker is not None:  # the training run: it logs the model file itself, so no second 40 MB copy
        tracker.log_metrics(metrics)
        for item in sorted(out.iterdir()):
            if item.name != "model.pt":
                (tracker.log_artifacts if item.is_dir() else tracker.log_artifact)(item, "evaluation" + (
                    f"/{item.name}" if item.is_dir() else ""))
    else:
        with Tracker(tracking_uri, cfg.experiment, f"evaluate-{Path(cfg.model).parent.name}", params,
                     {"stage": "evaluate", "method": info.method or kind.name}, parent_run_id) as run:
            run.log_metrics(metrics)
            run.log_artifacts(out)
    print(format_report(report, f"test report ({len(test)} images; thresholds chosen on {cfg.dev_split})"))
    print("clustering: " + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in metrics.items()
                                     if k.split("/")[1] in ("acc", "nmi", "ari", "purity", "homogeneity")))
    print(f"written to {out} (report.csv, metrics.json, figures/, gallery/gallery.html"
          f"{')' if loaded else ', model.pt)'}")
    return {"report": report, "metrics": metrics, "model": model_out, "thresholds": th, "out": out}


def _mix_from(clusters: np.ndarray, Y: np.ndarray, k: int) -> np.ndarray:
    """Label mix per cluster on the evaluated images (for two-head models' combination head)."""
    mix = np.tile(Y.mean(0), (k, 1))
    for c in np.unique(clusters):
        mix[c] = Y[clusters == c].mean(0)
    return mix


def _figures(cfg, info, ds, test, r_test, clusters, confidence, names, report, V, y_test, kind, out) -> None:
    """t-SNE of test features, per-class F1 bars, and the HTML cluster gallery."""
    plot_embedding(r_test["features"], clusters, names, out / "figures" / "tsne.png", method=cfg.embedding,
                   max_points=cfg.max_points, title=f"test features ({info.stage} {info.method})")
    plot_per_class_f1(report, out / "figures" / "per_class_f1.png", title="test F1 per class")
    if kind.matched or kind.combo:
        mix = V if V is not None else _mix_from(clusters, y_test, int(r_test["combo"].shape[1]))
        cluster_gallery(ds.images[ds.manifest["cache_row"].to_numpy()[test]], clusters, confidence, mix,
                        ds.classes, out / "gallery", per_cluster=cfg.gallery_per_cluster,
                        title=f"clusters of {Path(cfg.model).name} on the test split")
