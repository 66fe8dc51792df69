"""`usclf finetune`: supervised multi-label fine-tuning at a label fraction (paper Sec. 2.2.4, 3.2).

Feature extractor from `model.init` (random | imagenet | a usclf model/checkpoint), a new multi-label
head over the C+1 classes, BCE with logits, validation weighted F1 after every epoch (thresholds chosen on
validation) driving early stopping (patience 7) and best-weights selection, then per-class thresholds on
validation stored in the model file and the test report of `usclf evaluate` (stages/classifier.py).
"""
from __future__ import annotations

from pathlib import Path

from ..data.dataset import UltrasoundDataset
from ..data.sampler import RandomBatchSampler, make_loader
from ..methods import method_class
from ..models.heads import build_classifier
from ..train.distributed import seed_everything
from .classifier import (ValidationF1, cfg_labelled_rows, finish_classifier, init_kind, run_params,
                         run_tags, summary)
from .common import rows_in
from .runner import StagePlan, run_stage
from .stage_configs import FinetuneConfig


def _build(ctx) -> StagePlan:
    cfg, ds, dist = ctx.cfg, ctx.ds, ctx.dist
    rows = cfg_labelled_rows(cfg, ds)
    val = ValidationF1(ds, rows_in(ds, [cfg.dev_split], "validation images"), cfg.augment, cfg.data)
    rows_in(ds, [cfg.test_split], "test images")  # fail now rather than after training
    seed_everything(cfg.train.seed)  # the new head's (and a random backbone's) init follows the seed
    model = build_classifier(cfg.model.backbone, "multilabel", init=cfg.model.init,
                             imagenet_weights=cfg.model.imagenet_weights, num_classes=len(ds.classes))
    dataset = UltrasoundDataset(ds, rows, views=("weak",), aug=cfg.augment)
    b = cfg.data.batch_size
    # drop a last partial batch (it could hold a single image, which BatchNorm rejects) unless it is the only one;
    # b is the global batch: under DDP each rank takes its share of it (data/sampler.py)
    sampler = RandomBatchSampler(len(rows), b, seed=cfg.train.seed, rank=dist.rank, world_size=dist.world_size,
                                 drop_last=len(rows) >= b)
    n_exams = ds.manifest["exam_id"].iloc[rows].nunique()
    params = {**run_params("finetune", "supervised", cfg, ctx, len(rows)), "n_train_exams": n_exams}
    return StagePlan(model, make_loader(dataset, sampler, cfg.data.workers, pin_memory=True),
                     method_class("finetune", "supervised")(),
                     cfg.train, f"finetune-{init_kind(cfg.model.init)}-f{cfg.label_fraction}-seed{cfg.train.seed}",
                     params, run_tags("finetune", "supervised", cfg), on_epoch_end=val,
                     extra={"rows": rows, "n_exams": n_exams})


def _finish(ctx, plan: StagePlan, result, tracker) -> Path:
    cfg, rows = ctx.cfg, plan.extra["rows"]
    path, ev = finish_classifier(plan.model, cfg, ctx, result, tracker, "finetune", "supervised",
                                 n_train_images=len(rows))
    which = "labeled_ids" if cfg.labeled_ids else f"{cfg.label_fraction:g} of the labels"
    print(f"fine-tuned ({init_kind(cfg.model.init)} init, {which} = "
          f"{len(rows)} images / {plan.extra['n_exams']} exams) for {result.epochs} epochs / {result.steps} steps; "
          f"{summary(result, ev)} -> {path}")
    return path


def finetune(cfg: FinetuneConfig, resume: bool = False, tracking_uri: str | None = None,
             parent_run_id: str | None = None) -> Path:
    """Train the supervised classifier; returns the model file (best-validation weights + thresholds)."""
    return run_stage(cfg, _build, _finish, resume, tracking_uri, parent_run_id)
