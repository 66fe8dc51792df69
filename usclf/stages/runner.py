"""The one skeleton every training stage runs: data -> plan -> run folder -> MLflow run -> Trainer -> finish.

A stage (pretrain, finetune, semisup) supplies two functions: `build(ctx) -> StagePlan` (its rows, model,
loader, step and what to log) and `finish(ctx, plan, result, tracker) -> Path` (its model file and report,
called on the main process only). Everything else — distributed setup, opening the split, validating
before anything is written, the run folder's lock (one writer per --out: a second run stops before it
writes config.yaml), the run folder and config.yaml, the tracked run, fit and resume — lives here.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.cache import CachedDataset
from ..locks import output_lock
from ..paths import check_out_dir
from ..tracking import Tracker
from ..train.distributed import DistInfo, get_dist_info, init_distributed
from ..train.loop import TrainConfig, Trainer, TrainResult
from .common import open_split
from .run_dir import prepare_run_dir


@dataclass
class StageContext:
    """What `build` and `finish` are given: the config, the opened split, the process and the run folder."""
    cfg: Any
    ds: CachedDataset
    dhash: str
    dist: DistInfo
    tracking_uri: str | None = None
    out: Path | None = None              # set once the run folder is prepared (after `build`)


@dataclass
class StagePlan:
    """What a stage trains: the Trainer's inputs and the tracked run's name, params and tags."""
    model: torch.nn.Module
    loader: Any
    step: Callable
    train: TrainConfig
    run_name: str
    params: dict
    tags: dict
    on_epoch_end: Callable | None = None
    extra: dict | None = None            # stage-own values `finish` needs (rows, method, ...)
    trainer: Trainer | None = None       # set by run_stage (finish may read its EMA)


def run_stage(cfg: Any, build: Callable[[StageContext], StagePlan],
              finish: Callable[[StageContext, StagePlan, TrainResult, Tracker], Path],
              resume: bool = False, tracking_uri: str | None = None, parent_run_id: str | None = None) -> Path:
    """Run one training stage; returns its model file. `build` runs before anything is written, so a bad
    setting or an empty split fails with nothing on disk; a resume that changes the run is refused."""
    dist = init_distributed() if get_dist_info().world_size > 1 else get_dist_info()
    ds, dhash = open_split(cfg.data)
    ctx = StageContext(cfg, ds, dhash, dist, tracking_uri)
    plan = build(ctx)
    check_out_dir(cfg.out)
    lock = output_lock(cfg.out, stage_command(cfg)) if dist.is_main else nullcontext()
    with lock:  # one writer per run folder: a second run on it stops here, before config.yaml
        ctx.out = prepare_run_dir(cfg, resume, write=dist.is_main)
        path = ctx.out / "model.pt"
        with Tracker(tracking_uri, cfg.experiment, plan.run_name, plan.params, plan.tags, parent_run_id,
                     enabled=dist.is_main) as tracker:
            plan.trainer = Trainer(plan.model, plan.train, plan.step, ctx.out / "checkpoints", tracker,
                                   on_epoch_end=plan.on_epoch_end)
            result = plan.trainer.fit(plan.loader, resume=resume)
            if dist.is_main:
                path = finish(ctx, plan, result, tracker)
    return path


def stage_command(cfg: Any) -> str:
    """'finetune' for a FinetuneConfig: the command named in a second run's lock message."""
    name = type(cfg).__name__
    return name[:-len("Config")].lower() if name.endswith("Config") else "training run"
