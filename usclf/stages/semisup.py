"""`usclf semisup`: semi-supervised multi-label training with a registered method (paper Sec. 2.3, Fig. 3).

Each step: B labelled images (weak view) and about mu*B unlabelled images drawn by whole exams (weak +
strong views) in ONE forward pass; the method (usclf/methods/: the paper's one- and two-head FixMatch and
the candidates) turns it into a loss. A fixed number of steps (paper: 5000; the `labeled_epochs` rule can
raise it) with validation every `eval_every` steps and the best-validation weights kept.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..data.dataset import UltrasoundDataset
from ..data.unlabeled_loader import fixmatch_loader, unlabeled_dataset, unlabeled_exams_per_step, unlabeled_rows
from ..eval.pseudo_diagnostics import truth_labels
from ..methods import method_class
from ..methods.semisup_base import MethodSetup, SemisupMethod
from ..models.heads import build_classifier
from ..train.distributed import seed_everything
from ..train.loop import TrainConfig
from .classifier import (ValidationF1, cfg_labelled_rows, finish_classifier, init_kind, run_params,
                         run_tags, summary)
from .common import rows_in
from .runner import StagePlan, run_stage
from .stage_configs import SemisupConfig, check_config  # noqa: F401 (the stage's config, importable from here)


def schedule(cfg: SemisupConfig, n_labeled: int) -> TrainConfig:
    """The TrainConfig of this run: `train.max_steps`, raised by the `labeled_epochs` rule when set."""
    if cfg.labeled_epochs is None:
        return cfg.train
    steps = math.ceil(cfg.labeled_epochs * n_labeled / cfg.data.batch_size)
    return replace(cfg.train, max_steps=max(int(cfg.train.max_steps or 0), steps))


def build_method(cfg: SemisupConfig, ds, lab_rows: np.ndarray, unl_rows: np.ndarray | None = None) -> SemisupMethod:
    """The configured method, built from the labelled rows, the unlabelled pool (per-sample state is keyed
    by a row's position in it) and the truth (diagnostics only)."""
    truth = truth_labels(ds) if cfg.diagnostics else None
    setup = MethodSetup(classes=list(ds.classes), y_labeled=ds.labels(lab_rows).astype(int), tau=cfg.tau,
                        lambda_u=cfg.lambda_u, min_count=cfg.min_count, teacher=cfg.teacher, truth=truth,
                        diagnostics=cfg.diagnostics, unlabeled_rows=unl_rows, forward=cfg.forward)
    return method_class("semisup", cfg.method)(setup, cfg.options)


def _build(ctx) -> StagePlan:
    cfg, ds, dist = ctx.cfg, ctx.ds, ctx.dist
    lab_rows = cfg_labelled_rows(cfg, ds)
    unl_rows = unlabeled_rows(ds, cfg.unlabeled_splits, lab_rows, cfg.unlabeled_train_rest)
    val = ValidationF1(ds, rows_in(ds, [cfg.dev_split], "validation images"), cfg.augment, cfg.data)
    rows_in(ds, [cfg.test_split], "test images")  # fail now rather than after training
    method = build_method(cfg, ds, lab_rows, unl_rows)
    seed_everything(cfg.train.seed)  # the new head's (and a random backbone's) init follows the seed
    model = build_classifier(cfg.model.backbone, method.head, init=cfg.model.init,
                             imagenet_weights=cfg.model.imagenet_weights, **method.model_sizes())
    labeled = UltrasoundDataset(ds, lab_rows, views=("weak",), aug=cfg.augment)
    unlabeled = unlabeled_dataset(ds, unl_rows, cfg.augment)
    b, cap = cfg.data.batch_size, cfg.data.max_images_per_exam
    train_cfg = schedule(cfg, len(lab_rows))
    t_u = cfg.unlabeled_exams or unlabeled_exams_per_step(unlabeled.exam_ids, cfg.mu, b, cap)
    loader = fixmatch_loader(labeled, unlabeled, b, t_u, cap, cfg.eval_every, seed=cfg.train.seed,
                             rank=dist.rank, world_size=dist.world_size, workers=cfg.data.workers, pin_memory=True)
    params = {**run_params("semisup", cfg.method, cfg, ctx, len(lab_rows)), "head": method.meta()["head"],
              "tau": cfg.tau, "lambda_u": cfg.lambda_u, "mu": cfg.mu, "unlabeled_exams_per_step": t_u,
              "forward": cfg.forward,
              "K": len(method.vocab), "n_ignored_label_sets": method.n_ignored, "teacher": cfg.teacher,
              "max_steps": train_cfg.max_steps, "n_unlabeled_images": len(unl_rows)}
    name = f"semisup-{cfg.method}-{init_kind(cfg.model.init)}-f{cfg.label_fraction}-seed{cfg.train.seed}"
    return StagePlan(model, loader, method, train_cfg, name, params, run_tags("semisup", cfg.method, cfg),
                     on_epoch_end=val, extra={"lab": lab_rows, "unl": unl_rows, "method": method, "t_u": t_u})


def _finish(ctx, plan: StagePlan, result, tracker) -> Path:
    cfg, model, method, ema = ctx.cfg, plan.model, plan.extra["method"], plan.trainer.ema
    n_lab, n_unl = len(plan.extra["lab"]), len(plan.extra["unl"])
    if ema is not None and not (cfg.train.restore_best and result.best_epoch is not None):
        model.load_state_dict(ema.state_dict())  # no best-val weights restored: predict with EMA, as FixMatch does
    masks = [h["train/mask_rate"] for h in result.history if "train/mask_rate" in h]
    if cfg.diagnostics:
        for f in method.diag.write(ctx.out / "diagnostics", cfg.eval_every, f"{cfg.method}: pseudo-labels"):
            tracker.log_artifact(f, "diagnostics")
    meta = method.meta()
    path, ev = finish_classifier(model, cfg, ctx, result, tracker, "semisup", cfg.method,
                                 meta["vocab"], head=meta["head"], method_options=meta["method_options"],
                                 teacher=cfg.teacher, tau=cfg.tau, lambda_u=cfg.lambda_u, mu=cfg.mu,
                                 n_train_images=n_lab, n_unlabeled_images=n_unl)
    vocab = method.vocab
    print(f"{cfg.method} ({init_kind(cfg.model.init)} init, {n_lab} labelled + {n_unl} unlabelled images, "
          f"{plan.extra['t_u']} unlabelled exams/step{f', K={len(vocab)} label sets' if vocab else ''}) for "
          f"{result.steps} steps; mask rate {masks[0] if masks else float('nan'):.2f} -> "
          f"{masks[-1] if masks else float('nan'):.2f}; {summary(result, ev)} -> {path}")
    return path


def semisup(cfg: SemisupConfig, resume: bool = False, tracking_uri: str | None = None,
            parent_run_id: str | None = None) -> Path:
    """Train with the configured method; returns the model file (best-validation weights + thresholds)."""
    check_config(cfg)
    return run_stage(cfg, _build, _finish, resume, tracking_uri, parent_run_id)
