"""`usclf pretrain`: deep clustering (PICA, LSD or another registered pretrain method) on unlabelled exam-level
batches (paper Sec. 2.2). The method object (usclf/methods/, built from the config's `options:`) is the
Trainer's step, so its state is checkpointed like any other method's."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import to_dict
from ..data.dataset import UltrasoundDataset
from ..data.sampler import ExamBatchSampler, make_loader
from ..errors import UsclfError
from ..eval.clustering import combination_vocabulary
from ..methods import method_class
from ..methods.clustering import ClusteringMethod, collapse_warning
from ..models.heads import build_classifier
from ..models.modelfile import ModelInfo, save_model_file
from ..train.loop import seed_everything
from .common import preprocess_meta, rows_in
from .evaluate import EvaluateConfig, evaluate
from .runner import StagePlan, run_stage
from .stage_configs import PretrainConfig


def default_k(ds, min_count: int, dev_split: str = "val") -> tuple[int, list]:
    """K = number of label combinations among labelled training images (paper Sec. 2.2.3)."""
    rows = np.flatnonzero(ds.manifest["split"].isin(["train", dev_split]).to_numpy())
    if len(rows) == 0:
        raise UsclfError(f"cannot derive K: no labelled train/{dev_split} images; set k= explicitly")
    vocab, _ = combination_vocabulary(ds.labels(rows).astype(int), min_count=min_count)
    return len(vocab), [list(map(int, v)) for v in vocab]


def _build(ctx) -> StagePlan:
    cfg, ds, dist = ctx.cfg, ctx.ds, ctx.dist
    k, vocab = (cfg.k, []) if cfg.k else default_k(ds, cfg.min_count, cfg.dev_split)
    if cfg.k:
        labelled = ds.manifest["split"].isin(["train", cfg.dev_split]).any()
        vocab = default_k(ds, cfg.min_count, cfg.dev_split)[1] if labelled else []
    rows = rows_in(ds, cfg.train_splits, "training images")
    dataset = UltrasoundDataset(ds, rows, views=("weak", "weak"), aug=cfg.augment)  # PICA: 2 independent draws
    sampler = ExamBatchSampler(dataset.exam_ids, cfg.data.exams_per_batch, cfg.data.max_images_per_exam,
                               seed=cfg.train.seed, rank=dist.rank, world_size=dist.world_size)
    loader = make_loader(dataset, sampler, cfg.data.workers, pin_memory=True)
    seed_everything(cfg.train.seed)  # the head's (and a random backbone's) initial weights follow the seed
    model = build_classifier(cfg.model.backbone, "cluster", init=cfg.model.init,
                             imagenet_weights=cfg.model.imagenet_weights, num_clusters=k)
    method = build_method(cfg)
    params = {"stage": "pretrain", "method": cfg.method, **method.run_params(),
              "K": k, "seed": cfg.train.seed, "data_hash": ctx.dhash, "n_train_images": len(rows),
              "config": to_dict(cfg)}
    tags = {"stage": "pretrain", "method": cfg.method, "init": cfg.model.init}
    return StagePlan(model, loader, method, cfg.train, f"pretrain-{cfg.method}-seed{cfg.train.seed}", params, tags,
                     extra={"k": k, "vocab": vocab, "rows": rows, "method": method})


def _finish(ctx, plan: StagePlan, result, tracker) -> Path:
    cfg, ds, k = ctx.cfg, ctx.ds, plan.extra["k"]
    path = ctx.out / "model.pt"
    save_model_file(path, plan.model, ModelInfo(
        list(ds.classes), "pretrain", cfg.method, preprocess_meta(ds, cfg.augment), vocab=plan.extra["vocab"],
        data_hash=ctx.dhash, provenance={"steps": result.steps, "epochs": result.epochs, "seed": cfg.train.seed,
                                         **plan.extra["method"].provenance()}))
    tracker.log_artifact(ctx.out / "config.yaml")
    print(f"pretrained {cfg.method.upper()} (K={k}) for {result.epochs} epochs / {result.steps} steps "
          f"on {len(plan.extra['rows'])} images -> {path}")
    warn = collapse_warning(result.history, k)
    tracker.log_metrics({"collapsed": float(warn is not None)})
    if warn:
        print(warn, file=sys.stderr)
    if cfg.evaluate_after and {cfg.dev_split, cfg.test_split} <= set(ds.manifest["split"]):
        ev = evaluate(EvaluateConfig(model=str(path), out=str(ctx.out / "eval"), data=cfg.data, device=cfg.train.device,
                                     dev_split=cfg.dev_split, test_split=cfg.test_split),
                      tracker=tracker, progress=cfg.train.progress)
        tracker.log_artifact(ev["model"], "model")  # with its cluster matching + thresholds: predict-ready
    else:
        tracker.log_artifact(path, "model")
    return path


def build_method(cfg: PretrainConfig) -> ClusteringMethod:
    """The configured method, built from its options."""
    return method_class("pretrain", cfg.method)(cfg.options)


def pretrain(cfg: PretrainConfig, resume: bool = False, tracking_uri: str | None = None,
             parent_run_id: str | None = None) -> Path:
    """Train the clustering model; returns the path of the model file (last-epoch weights, paper Sec. 3.2)."""
    # a bad method or option fails before the data opens; config.yaml (what --resume compares) and the
    # tracked config then hold every option of the method, defaults filled in
    cfg = replace(cfg, options=build_method(cfg).options_dict())
    return run_stage(cfg, _build, _finish, resume, tracking_uri, parent_run_id)
