"""The one training loop shared by every stage and baseline.

A stage supplies the model, a `step_fn(model, batch, ctx) -> (loss, metrics)` and a DataLoader; the
Trainer does device transfer, AMP, DDP, optimiser steps, the non-finite-loss guard, EMA, per-step and
per-epoch logging, validation hook with early stopping / best weights, and checkpoints that resume to
bit-identical weights on CPU.

Resume contract with the loader: if `loader.batch_sampler` has `state_dict`/`load_state_dict`, its state
is saved with each checkpoint and restored on resume (the sampler then skips consumed batches);
otherwise the loop re-draws the epoch's order (the RNG state at epoch start is saved) and discards the
batches already consumed. `set_epoch(e)` is called on the batch sampler (or sampler) at each epoch start.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UsclfError
from ..validate import positive, within
from .checkpoint import (FORMAT, capture_rng, cpu_state_dict, load_checkpoint, load_model_state,
                         restore_rng, sampler_state, sampler_with, save_checkpoint)
from .distributed import (all_reduce_mean, any_across_ranks, broadcast_object, gather_objects, get_dist_info,
                          resolve_device, seed_everything)
from .optim import EMA, OptimConfig, build_optimizer, lr_at, to_device  # noqa: F401 (re-exported)
from .sync_bn import convert_sync_batchnorm

log = logging.getLogger("usclf.train")
# a checkpoint that did not fit: the one before it is intact and `--resume` continues from there
_RESUME_HINT = "free space, then rerun with --resume to continue from the last good checkpoint"

LAST, BEST = "last.pt", "best.pt"


@dataclass
class TrainConfig:
    epochs: int = 100             # paper Sec. 3.2: 100 epochs for unsupervised clustering
    max_steps: int | None = None  # paper Sec. 3.2: 5000 steps for semi-supervised; overrides epochs
    optim: OptimConfig = field(default_factory=OptimConfig)
    amp: bool = True              # docs/design.md §5: AMP on CUDA only (bf16 if supported, else fp16 + GradScaler)
    channels_last: bool = True    # docs/design.md §5: CUDA only
    ckpt_every: int | None = 100  # docs/design.md §5: checkpoint every N steps (and at each epoch end); null = epoch ends only
    ckpt_epochs: int = 1          # epoch-end checkpoint every N epochs (and the last); >1 for tiny epochs
    seed: int = 0
    device: str = "auto"          # auto = cuda:LOCAL_RANK if available, else cpu
    grad_clip: float | None = None
    log_every: int = 10           # steps between per-step metric logs
    progress: bool = True
    ema: float | None = None      # docs/design.md §5, FixMatch: 0.999 (Sohn et al.); None = off
    ema_warmup: bool = False      # decay min(1 - 1/(k+1), ema) as Mean Teacher's code: for runs of ~1k steps
    patience: int | None = None   # paper Sec. 3.2: 7 for supervised fine-tuning; None = no early stop
    mode: str = "max"             # the hook's "metric" is better when larger (val weighted F1)
    restore_best: bool = True     # paper Sec. 3.2: supervised/semi-sup keep the best-val weights
    deterministic: bool = True    # reproducible resume; torch.use_deterministic_algorithms(warn_only)
    sync_bn: bool = False         # DDP only: BatchNorm statistics over the global batch (train/sync_bn.py)

    def __post_init__(self):
        if self.max_steps is None and self.epochs < 1:
            raise UsclfError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsclfError(f"train.max_steps must be >= 1, got {self.max_steps}")
        if (self.ckpt_every is not None and self.ckpt_every < 1) or self.log_every < 1 or self.ckpt_epochs < 1:
            raise UsclfError("train.ckpt_every (or null), train.ckpt_epochs and train.log_every must be >= 1")
        if self.mode not in ("max", "min"):
            raise UsclfError(f"train.mode must be max or min, got '{self.mode}'")
        within("train.ema", self.ema, 0.0, 1.0, allow_none=True)
        positive("train.grad_clip", self.grad_clip, allow_none=True)
        if self.patience is not None and self.patience < 1:
            raise UsclfError(f"train.patience must be >= 1 or null, got {self.patience}")


@dataclass
class StepContext:
    """What a step function may want to know besides the batch."""
    step: int            # optimiser steps completed before this one
    epoch: int           # 0-based
    batch_index: int     # 0-based, within the epoch
    device: torch.device
    rank: int = 0
    world_size: int = 1
    ema: nn.Module | None = None  # the EMA copy of the model (train.ema), e.g. a pseudo-label teacher


@dataclass
class TrainResult:
    steps: int
    epochs: int                     # epochs completed (a final partial epoch under max_steps counts)
    last_path: Path | None
    best_path: Path | None
    best_metric: float | None
    best_epoch: int | None
    stopped_early: bool
    history: list[dict[str, float]]


def _float(v: Any) -> float:
    return float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)


class Trainer:
    """Runs `step_fn` over a loader for `cfg.epochs` epochs or `cfg.max_steps` steps; see module doc."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, step_fn: Callable, out_dir: str | Path,
                 tracker: Any = None, on_epoch_end: Callable | None = None):
        cfg.__post_init__()  # a config mutated after construction is checked again
        self.model, self.cfg, self.step_fn = model, cfg, step_fn
        self.out_dir = Path(out_dir)
        self.tracker, self.on_epoch_end = tracker, on_epoch_end
        self.dist = get_dist_info()
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.ema: EMA | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.total_steps: int | None = None

    @property
    def last_path(self) -> Path:
        return self.out_dir / LAST

    @property
    def best_path(self) -> Path:
        return self.out_dir / BEST

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg, cuda = self.cfg, self.device.type == "cuda"
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif cuda:
            torch.backends.cudnn.benchmark = True
        self.model.to(self.device)
        if self.dist.distributed and cfg.sync_bn:
            self.model = convert_sync_batchnorm(self.model, self.device)
        self.channels_last = bool(cfg.channels_last and cuda)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = None
        if cfg.amp and cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.optimizer = build_optimizer(list(self.model.parameters()), cfg.optim)
        self.clip_params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.ema = EMA(self.model, cfg.ema, cfg.ema_warmup) if cfg.ema else None
        self.net = self.model
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids)

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # ---------------------------------------------------------------- checkpoints
    def _state(self, epoch: int, batches_done: int, epoch_rng: dict, sums: dict, count: int,
               sampler_state: Any) -> dict:
        spec = self.model.spec() if callable(getattr(self.model, "spec", None)) else None  # usclf Classifier
        return {
            "format": FORMAT, "spec": spec, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": self.step, "epoch": epoch, "batches_done": batches_done, "sampler": sampler_state,
            "rng": capture_rng(), "epoch_rng": epoch_rng, "epoch_sums": dict(sums), "epoch_count": count,
            "best_metric": self.best_metric, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
            "history": self.history, "stopped_early": self.stopped_early,
            # a training method's own state (running thresholds, diagnostics): resumed with the weights
            "method": self.step_fn.state_dict() if callable(getattr(self.step_fn, "state_dict", None)) else None,
        }

    def _save_last(self, epoch: int, batches_done: int, epoch_rng: dict, sums: dict, count: int,
                   sampler_state: Any) -> None:
        # under DDP every rank's RNG and epoch sums go in too, so each rank resumes its own (a collective)
        ranks = gather_objects({"rng": capture_rng(), "epoch_rng": epoch_rng, "epoch_sums": dict(sums),
                                "epoch_count": count}) if self.dist.distributed else None
        if self.dist.is_main:
            state = self._state(epoch, batches_done, epoch_rng, sums, count, sampler_state)
            if ranks is not None:
                state["ranks"] = ranks
            save_checkpoint(self.last_path, state, hint=_RESUME_HINT)

    def _resume(self) -> dict | None:
        if not self.last_path.is_file():
            log.warning("no checkpoint at %s; starting from scratch", self.last_path)
            return None
        ck = load_checkpoint(self.last_path)
        if ck.get("format") != FORMAT:
            raise UsclfError(f"{self.last_path} is not a usclf training checkpoint")
        load_model_state(self.model, ck["model"], self.last_path)
        try:
            self.optimizer.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError) as e:
            raise UsclfError(f"optimizer state in {self.last_path} does not fit this run: {e}") from None
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        if self.ema is not None:
            if ck.get("ema") is None:
                raise UsclfError(f"{self.last_path} was written without EMA but this run uses ema={self.cfg.ema}")
            self.ema.load_state_dict(ck["ema"])
        self.step, self.best_metric = int(ck["step"]), ck["best_metric"]
        self.best_epoch, self.bad_epochs = ck["best_epoch"], int(ck["bad_epochs"])
        self.history, self.stopped_early = list(ck["history"]), bool(ck["stopped_early"])
        if callable(getattr(self.step_fn, "load_state_dict", None)):
            if ck.get("method") is not None:
                self.step_fn.load_state_dict(ck["method"])
            elif self.step_fn.state_dict():  # a stateless method (PICA, LSD) has nothing to restore
                raise UsclfError(f"{self.last_path} holds no state for this run's training method")
        if self.best_epoch is not None and self.best_path.is_file():
            self.best_state = load_checkpoint(self.best_path)["model"]
        ranks = ck.get("ranks") if self.dist.distributed else None
        if ranks is not None and len(ranks) == self.dist.world_size:
            ck = {**ck, **ranks[self.dist.rank]}  # this rank's own RNG and epoch sums
        elif ranks is not None:
            log.warning("%s was written by %d processes, this run has %d: every rank resumes rank 0's RNG",
                        self.last_path, len(ranks), self.dist.world_size)
        return ck

    # ---------------------------------------------------------------- one step
    def _train_step(self, batch: Any, ctx: StepContext) -> dict[str, float]:
        batch = to_device(batch, self.device, self.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            out = self.step_fn(self.net, batch, ctx)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor)):
            raise UsclfError("step_fn must return (loss tensor, metrics dict)")
        loss, metrics = out
        if loss.ndim != 0:
            raise UsclfError(f"step_fn returned a loss of shape {tuple(loss.shape)}; expected a scalar")
        values = {"loss": _float(loss)}
        values.update({k: _float(v) for k, v in (metrics or {}).items()})
        bad = not math.isfinite(values["loss"])
        if any_across_ranks(bad, self.device):
            extra = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            raise UsclfError(f"non-finite loss at step {ctx.step + 1} (epoch {ctx.epoch + 1}, "
                             f"batch {ctx.batch_index + 1}): {extra}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            values["grad_norm"] = _float(torch.nn.utils.clip_grad_norm_(self.clip_params, self.cfg.grad_clip))
        if self.cfg.optim.schedule != "constant":  # a pure function of the step: nothing extra to checkpoint
            for g in self.optimizer.param_groups:
                g["lr"] = lr_at(self.cfg.optim, ctx.step, self.total_steps)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model, ctx.step)
        return values

    # ---------------------------------------------------------------- epoch end
    def _end_epoch(self, epoch: int, sums: dict, count: int) -> bool:
        means = all_reduce_mean({k: v / max(count, 1) for k, v in sums.items()}, self.device)
        row = {f"train/{k}": v for k, v in means.items()}
        out = self.on_epoch_end(epoch, self._eval_model()) if self.on_epoch_end else None
        out = broadcast_object(dict(out or {}))
        metric = out.get("metric")
        is_best = out.get("is_best")
        if is_best is None and metric is not None:
            m = float(metric)
            is_best = self.best_metric is None or (m > self.best_metric if self.cfg.mode == "max"
                                                   else m < self.best_metric)
        if is_best:
            self.best_metric = None if metric is None else float(metric)
            self.best_epoch, self.bad_epochs = epoch, 0
            self.best_state = cpu_state_dict(self._eval_model())
            if self.dist.is_main:
                save_checkpoint(self.best_path, {"format": FORMAT, "model": self.best_state, "epoch": epoch,
                                                 "step": self.step, "metric": self.best_metric},
                                hint=_RESUME_HINT)
        elif metric is not None or "is_best" in out:
            self.bad_epochs += 1
        stop = bool(out.get("stop", False))
        if self.cfg.patience is not None and self.bad_epochs >= self.cfg.patience:
            stop = True
        for k, v in out.items():
            if k not in ("stop", "is_best") and isinstance(v, (int, float, torch.Tensor)) \
                    and not isinstance(v, bool):
                row[k if k != "metric" else "val/metric"] = _float(v)
        row["epoch"] = float(epoch)
        row["lr"] = float(self.optimizer.param_groups[0]["lr"])
        self.history.append(row)
        if self.tracker is not None and self.dist.is_main:
            self.tracker.log_metrics(row, step=epoch)
        self.stopped_early = self.stopped_early or stop
        return stop

    # ---------------------------------------------------------------- main loop
    def _done(self, epoch: int) -> bool:
        if self.stopped_early:
            return True
        if self.cfg.max_steps is not None:
            return self.step >= self.cfg.max_steps
        return epoch >= self.cfg.epochs

    def fit(self, loader: Any, resume: bool = False) -> TrainResult:
        """Train; with `resume=True` continue from `out_dir/last.pt` (fresh start when there is none)."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.step, self.best_metric, self.best_epoch, self.bad_epochs = 0, None, None, 0
        self.history: list[dict[str, float]] = []
        self.stopped_early, self.best_state = False, None
        seed_everything(cfg.seed + self.dist.rank)
        self._setup()
        ck = self._resume() if resume else None
        if ck is None and self.dist.is_main and self.best_path.is_file():
            self.best_path.unlink()  # a stale best.pt from an earlier run in this folder
        epoch = int(ck["epoch"]) if ck else 0
        state_sampler = sampler_with(loader, "load_state_dict", ("batch_sampler",))  # counts batches
        epoch_sampler = sampler_with(loader, "set_epoch")
        if callable(getattr(loader, "set_device", None)):  # augment.backend=device: views made on our device
            loader.set_device(self.device)
        n_batches = len(loader) if hasattr(loader, "__len__") else None
        self.total_steps = cfg.max_steps or (cfg.epochs * n_batches if n_batches else None)
        while not self._done(epoch):
            sums: dict[str, float] = {}
            count = skip = 0
            if ck is not None and ck["batches_done"] > 0:  # resume mid-epoch
                restore_rng(ck["epoch_rng"])
                epoch_rng, count = ck["epoch_rng"], int(ck["epoch_count"])
                sums = dict(ck["epoch_sums"])
                if epoch_sampler is not None:
                    epoch_sampler.set_epoch(epoch)
                if state_sampler is not None and ck["sampler"] is not None:
                    state_sampler.load_state_dict(ck["sampler"])
                else:
                    skip = int(ck["batches_done"])
            else:
                if ck is not None:
                    restore_rng(ck["rng"])
                epoch_rng = capture_rng()
                if epoch_sampler is not None:
                    epoch_sampler.set_epoch(epoch)
            it = iter(loader)  # may draw from the RNG (DataLoader base seed, shuffling), hence epoch_rng
            for _ in range(skip):
                next(it)
            b = int(ck["batches_done"]) if ck is not None else 0
            if ck is not None and b > 0:
                restore_rng(ck["rng"])
            ck = None
            total = len(loader) if hasattr(loader, "__len__") else None
            bar = tqdm(total=total, initial=b, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True,
                       disable=not (cfg.progress and self.dist.is_main))
            for batch in it:
                ctx = StepContext(self.step, epoch, b, self.device, self.dist.rank, self.dist.world_size,
                                  self.ema.module if self.ema is not None else None)
                self.net.train()
                values = self._train_step(batch, ctx)
                self.step += 1
                b += 1
                count += 1
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4g}")
                if self.tracker is not None and self.step % cfg.log_every == 0:
                    logged = all_reduce_mean(values, self.device)  # the mean over ranks (a collective)
                    if self.dist.is_main:
                        self.tracker.log_metrics({f"step/{k}": v for k, v in logged.items()}, step=self.step)
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    break
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and (total is None or b < total):
                    state = sampler_state(state_sampler, b)
                    self._save_last(epoch, b, epoch_rng, sums, count, state)
            bar.close()
            if b == 0:
                raise UsclfError(f"the training loader yielded no batches (epoch {epoch + 1})")
            self._end_epoch(epoch, sums, count)
            epoch += 1
            if epoch % cfg.ckpt_epochs == 0 or self._done(epoch):
                self._save_last(epoch, 0, capture_rng(), {}, 0, None)
        if cfg.restore_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return TrainResult(steps=self.step, epochs=epoch,
                           last_path=self.last_path if self.last_path.is_file() else None,
                           best_path=self.best_path if self.best_path.is_file() else None,
                           best_metric=self.best_metric, best_epoch=self.best_epoch,
                           stopped_early=self.stopped_early, history=list(self.history))
