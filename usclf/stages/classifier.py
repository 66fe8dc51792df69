"""What the two classifier stages (finetune, semisup) share: the labelled subset, validation F1, the close.

Both configs carry the fields `ClassifierStageConfig` names; `finish_classifier` reads only those.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..config import to_dict
from ..data.manifest import read_image_ids
from ..data.splits import label_fraction_mask
from ..data.transforms import AugmentConfig
from ..errors import UsclfError
from ..eval.inference import infer
from ..models.modelfile import ModelInfo, read_model_info
from ..tracking import Tracker
from ..train.distributed import get_dist_info
from ..train.loop import TrainConfig, TrainResult
from .common import DataConfig, ModelConfig, preprocess_meta
from .evaluate import EvaluateConfig, evaluate
from .runner import StageContext
from .scoring import sigmoid, val_weighted_f1


class ClassifierStageConfig(Protocol):
    """The fields FinetuneConfig and SemisupConfig share (what this module reads)."""
    label_fraction: float
    fraction_seed: int | None
    labeled_ids: str | None
    dev_split: str
    test_split: str
    out: str
    experiment: str
    figures: bool
    data: DataConfig
    model: ModelConfig
    augment: AugmentConfig
    train: TrainConfig


def init_kind(init: str) -> str:
    """'random', 'imagenet', or for a model file the method its model-file info names ('lsd', 'pica', ...;
    'checkpoint' when it names none or cannot be read): the short name studies group runs by."""
    if init in ("random", "imagenet"):
        return init
    p = Path(init)
    try:
        return _model_method(str(p.resolve()), p.stat().st_mtime_ns)
    except (OSError, UsclfError):
        return "checkpoint"


@lru_cache(maxsize=16)
def _model_method(path: str, mtime_ns: int) -> str:
    return read_model_info(path).method or "checkpoint"


def fraction_seed(cfg: ClassifierStageConfig) -> int:
    """Seed of the nested label subset: `fraction_seed`, else the training seed."""
    return cfg.train.seed if cfg.fraction_seed is None else cfg.fraction_seed


def labelled_rows(ds, fraction: float, seed: int, labeled_ids: str | None = None) -> np.ndarray:
    """Manifest rows of the train exams kept at `fraction` (nested across fractions for one seed), or, with
    `labeled_ids` (a CSV with an image_id column, e.g. frames chosen by `usclf suggest`), those train rows."""
    if labeled_ids:
        rows = _rows_of_ids(ds, labeled_ids)
    else:
        rows = np.flatnonzero(label_fraction_mask(ds.manifest, fraction, seed))
    if np.isnan(ds.labels(rows)).any():
        raise UsclfError("some train rows have no labels; re-run `usclf split` on the dataset")
    if len(rows) < 2:
        raise UsclfError(f"label fraction {fraction} keeps {len(rows)} labelled image(s); BatchNorm needs >= 2")
    return rows


def _rows_of_ids(ds, path: str) -> np.ndarray:
    ids = read_image_ids(path, "labeled_ids file")
    man = ds.manifest
    train = (man["split"] == "train").to_numpy()
    where = dict(zip(man["image_id"].astype(str), range(len(man))))
    missing = [i for i in ids if i not in where or not train[where[i]]]
    if missing:
        raise UsclfError(f"{path}: {len(missing)} image id(s) are not train rows of {ds.root}, e.g. {missing[0]}")
    return np.array(sorted({where[i] for i in ids}), dtype=np.int64)


def cfg_labelled_rows(cfg: ClassifierStageConfig, ds) -> np.ndarray:
    """The stage's labelled train rows: `labeled_ids` when set, else the label fraction."""
    return labelled_rows(ds, cfg.label_fraction, fraction_seed(cfg), cfg.labeled_ids)


def run_params(stage: str, method: str, cfg: ClassifierStageConfig, ctx: StageContext, n_train: int) -> dict:
    """The MLflow params both classifier stages log (each adds its own)."""
    return {"stage": stage, "method": method, "init": cfg.model.init, "init_kind": init_kind(cfg.model.init),
            "label_fraction": cfg.label_fraction, "seed": cfg.train.seed, "fraction_seed": fraction_seed(cfg),
            "labeled_ids": cfg.labeled_ids or "", "data_hash": ctx.dhash, "n_train_images": n_train,
            "config": to_dict(cfg)}


def run_tags(stage: str, method: str, cfg: ClassifierStageConfig) -> dict:
    """What a study's runs are told apart by in the MLflow UI (init: random / imagenet / lsd / pica ...)."""
    return {"stage": stage, "method": method, "init": init_kind(cfg.model.init), "label_fraction": cfg.label_fraction,
            "seed": cfg.train.seed, "split_seed": cfg.data.split_seed}


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


def finish_classifier(model: torch.nn.Module, cfg: ClassifierStageConfig, ctx: StageContext, result: TrainResult,
                      tracker: Tracker, stage: str, method: str, vocab: list | None = None,
                      **provenance: Any) -> tuple[Path, dict]:
    """`evaluate` on the model in memory: per-class thresholds chosen on validation (once), the test report,
    and the self-describing model file written once with them; metrics and artefacts logged to this run.
    `provenance`: the stage's own training facts. Returns (model path, evaluate's result)."""
    out = Path(cfg.out)
    facts = {"init": cfg.model.init, "label_fraction": cfg.label_fraction, "fraction_seed": fraction_seed(cfg),
             "seed": cfg.train.seed, "steps": result.steps, "epochs": result.epochs,
             "best_epoch": result.best_epoch, "best_val_f1": result.best_metric, **provenance}
    info = ModelInfo(list(ctx.ds.classes), stage, method, preprocess_meta(ctx.ds, cfg.augment),
                     vocab=list(vocab or []), data_hash=ctx.dhash, provenance=facts)
    ev = evaluate(EvaluateConfig(model=str(out / "model.pt"), out=str(out / "eval"), figures=cfg.figures,
                                 device=cfg.train.device, experiment=cfg.experiment, data=cfg.data,
                                 dev_split=cfg.dev_split, test_split=cfg.test_split),
                  ctx.tracking_uri, progress=cfg.train.progress, tracker=tracker,  # test metrics go to this run
                  loaded=(model, info))
    path = ev["model"]
    if result.best_metric is not None:
        tracker.log_metrics({"val/best_weighted_f1": result.best_metric})
    if not cfg.labeled_ids:  # numeric, so the UI can sort, filter and plot by it (params are strings)
        tracker.log_metrics({"label_fraction": cfg.label_fraction})
    tracker.log_artifact(out / "config.yaml")
    tracker.log_artifact(path, "model")
    return path, ev


def summary(result: TrainResult, ev: dict) -> str:
    """'best val weighted F1 ... (epoch e); test weighted F1 ...' for the closing line of a stage."""
    best = "n/a" if result.best_metric is None else f"{result.best_metric:.3f} (epoch {(result.best_epoch or 0) + 1})"
    return f"best val weighted F1 {best}; test weighted F1 {ev['metrics']['test/weighted_f1']:.3f}"
