"""`usclf finetune`: supervised multi-label fine-tuning at a label fraction (paper Sec. 2.2.4, 3.2).

Feature extractor from `model.init` (random | imagenet | a usclf model/checkpoint), a new multi-label
head over the C+1 classes, BCE with logits, validation weighted F1 after every epoch (thresholds chosen on
validation) driving early stopping (patience 7) and best-weights selection, then per-class thresholds on
validation stored in the model file and the test report of `usclf evaluate`. The validation hook and the
closing steps are shared with `usclf semisup`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import to_dict
from ..data.dataset import UltrasoundDataset
from ..data.sampler import RandomBatchSampler, make_loader
from ..data.splits import label_fraction_mask
from ..data.transforms import AugmentConfig
from ..errors import UsclfError
from ..eval.thresholds import best_f1_thresholds
from ..losses.supervised import multilabel_bce
from ..models.heads import build_classifier
from ..models.modelfile import save_model_file
from ..tracking import Tracker
from ..train.distributed import get_dist_info, init_distributed, seed_everything
from ..train.loop import TrainConfig, Trainer, TrainResult
from .run_dir import prepare_run_dir
from .common import DataConfig, ModelConfig, infer, open_split, preprocess_meta, rows_in
from .evaluate import EvaluateConfig, evaluate
from .scoring import sigmoid, val_weighted_f1


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning; defaults from the paper (Sec. 2.2.4, 3.2) unless noted."""
    label_fraction: float = 1.0          # share of labelled train exams used (paper Fig. 6: 0.1/0.2/0.5/1.0)
    fraction_seed: int | None = None     # seed of the nested label subset; null = train.seed
    out: str = "runs/finetune"
    experiment: str = "usclf-finetune"
    figures: bool = True                 # evaluate's t-SNE / per-class bars (off in multi-run studies)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # paper Sec. 3.2: early stopping after 7 epochs without validation improvement, best-val weights kept
    train: TrainConfig = field(default_factory=lambda: TrainConfig(patience=7))


def init_kind(init: str) -> str:
    """'random', 'imagenet' or 'checkpoint' (a path): the short name studies group runs by."""
    return init if init in ("random", "imagenet") else "checkpoint"


def labelled_rows(ds, fraction: float, seed: int) -> np.ndarray:
    """Manifest rows of the train exams kept at `fraction` (nested across fractions for one seed)."""
    rows = np.flatnonzero(label_fraction_mask(ds.manifest, fraction, seed))
    if np.isnan(ds.labels(rows)).any():
        raise UsclfError("some train rows have no labels; re-run `usclf split` on the dataset")
    if len(rows) < 2:
        raise UsclfError(f"label fraction {fraction} keeps {len(rows)} labelled image(s); BatchNorm needs >= 2")
    return rows


class ValidationF1:
    """`on_epoch_end` hook: weighted F1 on validation with per-class thresholds chosen there (Sec. 3.2).

    Scores are the sigmoid of the multi-label logits (the two-head model's sigmoid head)."""

    def __init__(self, ds, rows: np.ndarray, aug: AugmentConfig, data: DataConfig):
        self.ds, self.rows, self.aug, self.data = ds, rows, aug, data
        self.y = ds.labels(rows).astype(int)

    def scores(self, model: torch.nn.Module) -> np.ndarray:
        device = next(model.parameters()).device
        out = infer(model, self.ds, self.rows, self.aug, self.data.batch_size, self.data.workers, device)["out"]
        return sigmoid(out)

    def __call__(self, epoch: int, model: torch.nn.Module) -> dict[str, float]:
        if not get_dist_info().is_main:  # rank 0's result is broadcast by the Trainer
            return {}
        f1 = val_weighted_f1(self.y, self.scores(model))
        return {"metric": f1, "val/weighted_f1": f1}


def supervised_step(model, batch, ctx):
    """BCE with logits over the C+1 classes on the weak view."""
    return multilabel_bce(model(batch["views"][0]), batch["y"]), {}


def finish(model: torch.nn.Module, cfg: Any, ds, dhash: str, val: ValidationF1, result: TrainResult,
           tracker: Tracker, tracking_uri: str | None, **meta: Any) -> tuple[Path, dict]:
    """Thresholds on validation -> self-describing model file -> `evaluate`'s test report, its metrics and
    artefacts logged to this run. Returns (model path, evaluate's result)."""
    out = Path(cfg.out)
    th = best_f1_thresholds(val.y, val.scores(model))
    path = save_model_file(out / "model.pt", model, classes=list(ds.classes), thresholds=[float(t) for t in th],
                           matching=[], preprocess=preprocess_meta(ds, cfg.augment), data_hash=dhash,
                           steps=result.steps, epochs=result.epochs, best_epoch=result.best_epoch,
                           best_val_f1=result.best_metric, **meta)
    ev = evaluate(EvaluateConfig(model=str(path), out=str(out / "eval"), figures=cfg.figures,
                                 device=cfg.train.device, experiment=cfg.experiment, data=cfg.data),
                  tracking_uri, progress=cfg.train.progress, tracker=tracker)  # test metrics go to this run
    if result.best_metric is not None:
        tracker.log_metrics({"val/best_weighted_f1": result.best_metric})
    tracker.log_artifact(out / "config.yaml")
    tracker.log_artifact(path, "model")
    return path, ev


def summary(result: TrainResult, ev: dict) -> str:
    """'best val weighted F1 ... (epoch e); test weighted F1 ...' for the closing line of a stage."""
    best = "n/a" if result.best_metric is None else f"{result.best_metric:.3f} (epoch {(result.best_epoch or 0) + 1})"
    return f"best val weighted F1 {best}; test weighted F1 {ev['metrics']['test/weighted_f1']:.3f}"


def finetune(cfg: FinetuneConfig, resume: bool = False, tracking_uri: str | None = None,
             parent_run_id: str | None = None) -> Path:
    """Train the supervised classifier; returns the model file (best-validation weights + thresholds)."""
    dist = init_distributed() if get_dist_info().world_size > 1 else get_dist_info()
    ds, dhash = open_split(cfg.data)
    fseed = cfg.train.seed if cfg.fraction_seed is None else cfg.fraction_seed
    rows = labelled_rows(ds, cfg.label_fraction, fseed)
    val = ValidationF1(ds, rows_in(ds, ["val"], "validation images"), cfg.augment, cfg.data)
    rows_in(ds, ["test"], "test images")  # fail now rather than after training
    seed_everything(cfg.train.seed)  # the new head's (and a random backbone's) init follows the seed
    model = build_classifier(cfg.model.backbone, "multilabel", init=cfg.model.init,
                             imagenet_weights=cfg.model.imagenet_weights, num_classes=len(ds.classes))
    out = prepare_run_dir(cfg, resume, write=dist.is_main)
    dataset = UltrasoundDataset(ds, rows, views=("weak",), aug=cfg.augment)
    b = cfg.data.batch_size
    # drop a last partial batch (it could hold a single image, which BatchNorm rejects) unless it is the only one
    sampler = RandomBatchSampler(len(rows), b, seed=cfg.train.seed, rank=dist.rank, world_size=dist.world_size,
                                 drop_last=len(rows) // dist.world_size >= b)
    loader = make_loader(dataset, sampler, cfg.data.workers, pin_memory=True)
    n_exams = ds.manifest["exam_id"].iloc[rows].nunique()
    params = {"stage": "finetune", "method": "supervised", "init": cfg.model.init,
              "init_kind": init_kind(cfg.model.init), "fraction": cfg.label_fraction, "seed": cfg.train.seed,
              "fraction_seed": fseed, "data_hash": dhash, "n_train_images": len(rows), "n_train_exams": n_exams,
              "config": to_dict(cfg)}
    tags = {"stage": "finetune", "method": "supervised", "init": init_kind(cfg.model.init),
            "fraction": cfg.label_fraction}
    path = out / "model.pt"
    with Tracker(tracking_uri, cfg.experiment, f"finetune-{init_kind(cfg.model.init)}-f{cfg.label_fraction}"
                 f"-seed{cfg.train.seed}", params, tags, parent_run_id, enabled=dist.is_main) as tracker:
        trainer = Trainer(model, cfg.train, supervised_step, out / "checkpoints", tracker, on_epoch_end=val)
        result = trainer.fit(loader, resume=resume)
        if dist.is_main:
            path, ev = finish(model, cfg, ds, dhash, val, result, tracker, tracking_uri, stage="finetune",
                              method="supervised", init=cfg.model.init, label_fraction=cfg.label_fraction,
                              fraction_seed=fseed, seed=cfg.train.seed, n_train_images=len(rows))
            print(f"fine-tuned ({init_kind(cfg.model.init)} init, {cfg.label_fraction:g} of the labels = "
                  f"{len(rows)} images / {n_exams} exams) for {result.epochs} epochs / {result.steps} steps; "
                  f"{summary(result, ev)} -> {path}")
    return path
