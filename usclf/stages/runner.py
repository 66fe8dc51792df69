"""The one skeleton every training stage runs: data -> plan -> run folder -> MLflow run -> Trainer -> finish.

A stage (pretrain, finetune, semisup) supplies two functions: `build(ctx) -> StagePlan` (its rows, model,
loader, step and what to log) and `finish(ctx, plan, result, tracker) -> Path` (its model file and report,
called on the main process only). Everything else — distributed setup, opening the split, validating
before anything is written, the run folder's lock (one writer per --out: a second run stops before it
writes config.yaml), the run folder and config.yaml, the tracked run, fit and resume — lives here.

Under torchrun every rank builds the plan (its share of the data) and trains; rank 0 alone takes the
lock, writes the run folder, the MLflow run, validation and `finish` (thresholds, model file, report)
while the others wait, and a failure there stops every rank. A job that torchrun restarts after a
failure (`--max-restarts`) resumes from the run's last checkpoint.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.cache import CachedDataset
from ..locks import output_lock
from ..paths import check_out_dir
from ..tracking import Tracker
from ..train.distributed import (DistInfo, cleanup_distributed, elastic_restart, get_dist_info, init_distributed,
                                 run_on_main)
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
    joined = not get_dist_info().distributed
    dist = init_distributed()  # torchrun (WORLD_SIZE > 1): join the job; one process: nothing to do
    try:
        return _run(cfg, dist, build, finish, resume or elastic_restart(), tracking_uri, parent_run_id)
    finally:
        if joined:
            cleanup_distributed()


def _run(cfg: Any, dist: DistInfo, build: Callable, finish: Callable, resume: bool, tracking_uri: str | None,
         parent_run_id: str | None) -> Path:
    ds, dhash = open_split(cfg.data)
    ctx = StageContext(cfg, ds, dhash, dist, tracking_uri)
    plan = build(ctx)
    ctx.out = check_out_dir(cfg.out)
    with ExitStack() as held:
        def prepare() -> Path:  # one writer per run folder: a second run on it stops here, before config.yaml
            held.enter_context(output_lock(cfg.out, stage_command(cfg)))
            return prepare_run_dir(cfg, resume)
        run_on_main(prepare, "preparing the run folder")
        path = ctx.out / "model.pt"
        with Tracker(tracking_uri, cfg.experiment, plan.run_name, plan.params, plan.tags, parent_run_id,
                     enabled=dist.is_main) as tracker:
            plan.trainer = Trainer(plan.model, plan.train, plan.step, ctx.out / "checkpoints", tracker,
                                   on_epoch_end=plan.on_epoch_end)
            result = plan.trainer.fit(plan.loader, resume=resume)
            path = run_on_main(lambda: finish(ctx, plan, result, tracker), "the stage's evaluation") or path
    return path


def stage_command(cfg: Any) -> str:
    """'finetune' for a FinetuneConfig: the command named in a second run's lock message."""
    name = type(cfg).__name__
    return name[:-len("Config")].lower() if name.endswith("Config") else "training run"
