"""`usclf semisup`: semi-supervised multi-label training with a registered method (paper Sec. 2.3, Fig. 3).

The reference methods are the paper's multi-label FixMatch with one or two heads (usclf/methods/).

Each step: a labelled batch of B images (weak view) and about mu*B unlabelled images drawn by whole exams
(weak + strong views) go through ONE forward pass, so BatchNorm sees one batch. Pseudo-labels come from
the weak view without gradient. One head: sigmoid, pseudo-label p >= 0.5 kept when max p >= tau, BCE on
the strong view. Two heads: softmax over the label-combination vocabulary (from the labelled rows) gets
the standard FixMatch loss and CE on labelled rows (rare sets ignored), the sigmoid head gets BCE on
labelled rows and makes the predictions. A fixed number of steps (paper: 5000) with validation every
`eval_every` steps and the best-validation weights kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import to_dict
from ..data.dataset import UltrasoundDataset
from ..data.transforms import AugmentConfig
from ..errors import UsclfError
from ..eval.pseudo_diagnostics import truth_labels
from ..methods import method_class
from ..methods.semisup_base import MethodSetup, SemisupMethod, combo_targets  # noqa: F401 (re-exported)
from ..models.heads import build_classifier
from ..tracking import Tracker
from ..train.distributed import get_dist_info, init_distributed, seed_everything
from ..train.loop import TrainConfig, Trainer
from .run_dir import prepare_run_dir
from .common import DataConfig, ModelConfig, open_split, rows_in
from .finetune import ValidationF1, finish, init_kind, labelled_rows, summary
from .unlabeled_loader import fixmatch_loader, unlabeled_dataset, unlabeled_exams_per_step

@dataclass
class SemisupConfig:
    """Semi-supervised training; defaults from the paper (Sec. 2.3, 3.2) and FixMatch (Sohn et al.)."""
    method: str = "fixmatch-twohead"     # a registered method (usclf.methods.SEMISUP); paper Sec. 4: two heads win
    options: dict = field(default_factory=dict)  # the method's own options (see its Options dataclass)
    teacher: str = "student"             # student | ema: pseudo-labels from the EMA weights (needs train.ema)
    tau: float = 0.95                    # FixMatch confidence threshold (`>=`)
    lambda_u: float = 1.0                # FixMatch weight of the unlabelled loss
    mu: int = 7                          # FixMatch unlabelled:labelled ratio (images per step: mu * B)
    unlabeled_exams: int | None = None   # exams per unlabelled batch; null = round(mu * B / mean images per exam)
    min_count: int = 1                   # two-head vocabulary: label sets seen >= min_count times (DESIGN §4)
    eval_every: int = 250                # steps between validations (not in the paper: 20 per 5000-step run)
    # Schedule rule (ours): with labeled_epochs E the run lasts max(train.max_steps, ceil(E * n_labelled / B))
    # steps, so the labelled stream gets at least the E epochs a supervised run would; null = train.max_steps.
    labeled_epochs: float | None = None
    label_fraction: float = 1.0          # share of labelled train exams used (paper Fig. 6: 0.1/0.2/0.5/1.0)
    fraction_seed: int | None = None     # seed of the nested label subset; null = train.seed
    unlabeled_splits: list[str] = field(default_factory=lambda: ["unlabeled"])
    unlabeled_train_rest: bool = True    # train exams outside the label fraction join the unlabelled pool
    diagnostics: bool = True             # pseudo-label precision/recall vs the truth where known (simulated data)
    out: str = "runs/semisup"
    experiment: str = "usclf-semisup"
    figures: bool = True                 # evaluate's t-SNE / per-class bars / gallery (off in studies)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # paper Sec. 3.2: a fixed 5000 steps, best-validation weights kept; no early stopping
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=5000))


def check_config(cfg: SemisupConfig) -> None:
    """One-line errors for settings that cannot work."""
    method_class("semisup", cfg.method)
    if cfg.mu < 1 or cfg.eval_every < 1 or cfg.min_count < 1:
        raise UsclfError(f"mu, eval_every and min_count must be >= 1 (got {cfg.mu}, {cfg.eval_every}, {cfg.min_count})")
    if cfg.unlabeled_exams is not None and cfg.unlabeled_exams < 1:
        raise UsclfError(f"unlabeled_exams must be >= 1 or null, got {cfg.unlabeled_exams}")
    if not 0.0 <= cfg.tau <= 1.0 or cfg.lambda_u < 0:
        raise UsclfError(f"need 0 <= tau <= 1 and lambda_u >= 0 (got tau={cfg.tau}, lambda_u={cfg.lambda_u})")
    if cfg.labeled_epochs is not None and not cfg.labeled_epochs > 0:
        raise UsclfError(f"labeled_epochs must be > 0 or null, got {cfg.labeled_epochs}")
    if cfg.teacher == "ema" and not cfg.train.ema:
        raise UsclfError("teacher=ema needs train.ema (an EMA decay such as 0.999)")
    leak = sorted(set(cfg.unlabeled_splits) & {"val", "test"})
    if leak:
        raise UsclfError(f"unlabeled_splits must not include {', '.join(leak)}: it would train on evaluation images")


def unlabeled_rows(ds, splits: list[str], labelled: np.ndarray, train_rest: bool) -> np.ndarray:
    """Rows of the unlabelled pool: `splits` plus (optionally) train rows outside the labelled subset."""
    split = ds.manifest["split"].to_numpy()
    pool = np.isin(split, list(splits))
    if train_rest:
        rest = split == "train"
        rest[labelled] = False
        pool |= rest
    rows = np.flatnonzero(pool)
    if len(rows) == 0:
        raise UsclfError(f"no unlabelled images in split(s) {', '.join(splits)} of {ds.root}")
    return rows


def schedule(cfg: SemisupConfig, n_labeled: int) -> TrainConfig:
    """The TrainConfig of this run: `train.max_steps`, raised by the `labeled_epochs` rule when set."""
    if cfg.labeled_epochs is None:
        return cfg.train
    steps = math.ceil(cfg.labeled_epochs * n_labeled / cfg.data.batch_size)
    return replace(cfg.train, max_steps=max(int(cfg.train.max_steps or 0), steps))


def build_method(cfg: SemisupConfig, ds, lab_rows: np.ndarray) -> SemisupMethod:
    """The configured method, built from the labelled rows (and the truth, for diagnostics only)."""
    truth = truth_labels(ds) if cfg.diagnostics else None
    setup = MethodSetup(classes=list(ds.classes), y_labeled=ds.labels(lab_rows).astype(int), tau=cfg.tau,
                        lambda_u=cfg.lambda_u, min_count=cfg.min_count, teacher=cfg.teacher, truth=truth,
                        diagnostics=cfg.diagnostics)
    return method_class("semisup", cfg.method)(setup, cfg.options)


def semisup(cfg: SemisupConfig, resume: bool = False, tracking_uri: str | None = None,
            parent_run_id: str | None = None) -> Path:
    """Train with FixMatch; returns the model file (best-validation weights + thresholds)."""
    check_config(cfg)
    dist = init_distributed() if get_dist_info().world_size > 1 else get_dist_info()
    ds, dhash = open_split(cfg.data)
    fseed = cfg.train.seed if cfg.fraction_seed is None else cfg.fraction_seed
    lab_rows = labelled_rows(ds, cfg.label_fraction, fseed)
    unl_rows = unlabeled_rows(ds, cfg.unlabeled_splits, lab_rows, cfg.unlabeled_train_rest)
    val = ValidationF1(ds, rows_in(ds, ["val"], "validation images"), cfg.augment, cfg.data)
    rows_in(ds, ["test"], "test images")  # fail now rather than after training
    method = build_method(cfg, ds, lab_rows)
    seed_everything(cfg.train.seed)  # the new head's (and a random backbone's) init follows the seed
    model = build_classifier(cfg.model.backbone, method.head, init=cfg.model.init,
                             imagenet_weights=cfg.model.imagenet_weights, **method.model_sizes())
    out = prepare_run_dir(cfg, resume, write=dist.is_main)
    labeled = UltrasoundDataset(ds, lab_rows, views=("weak",), aug=cfg.augment)
    unlabeled = unlabeled_dataset(ds, unl_rows, cfg.augment)
    b, cap = cfg.data.batch_size, cfg.data.max_images_per_exam
    train_cfg = schedule(cfg, len(lab_rows))
    t_u = cfg.unlabeled_exams or unlabeled_exams_per_step(unlabeled.exam_ids, cfg.mu, b, cap)
    loader = fixmatch_loader(labeled, unlabeled, b, t_u, cap, cfg.eval_every, seed=cfg.train.seed,
                             rank=dist.rank, world_size=dist.world_size, workers=cfg.data.workers, pin_memory=True)
    vocab, heads = method.vocab, method.meta()["heads"]
    params = {"stage": "semisup", "method": cfg.method, "heads": heads, "init": cfg.model.init,
              "init_kind": init_kind(cfg.model.init), "fraction": cfg.label_fraction, "seed": cfg.train.seed,
              "fraction_seed": fseed, "data_hash": dhash, "tau": cfg.tau, "lambda_u": cfg.lambda_u, "mu": cfg.mu,
              "unlabeled_exams_per_step": t_u, "K": len(vocab), "n_train_images": len(lab_rows),
              "n_ignored_label_sets": method.n_ignored, "teacher": cfg.teacher, "max_steps": train_cfg.max_steps,
              "n_unlabeled_images": len(unl_rows),
              "config": to_dict(cfg)}
    tags = {"stage": "semisup", "method": cfg.method, "init": init_kind(cfg.model.init), "fraction": cfg.label_fraction}
    path = out / "model.pt"
    with Tracker(tracking_uri, cfg.experiment, f"semisup-{cfg.method}-{init_kind(cfg.model.init)}-f"
                 f"{cfg.label_fraction}-seed{cfg.train.seed}", params, tags, parent_run_id,
                 enabled=dist.is_main) as tracker:
        trainer = Trainer(model, train_cfg, method, out / "checkpoints", tracker, on_epoch_end=val)
        result = trainer.fit(loader, resume=resume)
        if trainer.ema is not None and not (cfg.train.restore_best and result.best_epoch is not None):
            # no best-val weights restored: predict with the EMA weights, as FixMatch does
            model.load_state_dict(trainer.ema.state_dict())
        if dist.is_main:
            masks = [h["train/mask_rate"] for h in result.history if "train/mask_rate" in h]
            if cfg.diagnostics:
                for f in method.diag.write(out / "diagnostics", cfg.eval_every, f"{cfg.method}: pseudo-labels"):
                    tracker.log_artifact(f, "diagnostics")
            path, ev = finish(model, cfg, ds, dhash, val, result, tracker, tracking_uri, stage="semisup",
                              **method.meta(), teacher=cfg.teacher, init=cfg.model.init,
                              label_fraction=cfg.label_fraction, fraction_seed=fseed,
                              seed=cfg.train.seed, tau=cfg.tau, lambda_u=cfg.lambda_u, mu=cfg.mu,
                              n_train_images=len(lab_rows), n_unlabeled_images=len(unl_rows))
            print(f"{cfg.method} ({init_kind(cfg.model.init)} init, {len(lab_rows)} labelled + "
                  f"{len(unl_rows)} unlabelled images, {t_u} unlabelled exams/step"
                  f"{f', K={len(vocab)} label sets' if vocab else ''}) for "
                  f"{result.steps} steps; mask rate {masks[0] if masks else float('nan'):.2f} -> "
                  f"{masks[-1] if masks else float('nan'):.2f}; {summary(result, ev)} -> {path}")
    return path
