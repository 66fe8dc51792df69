"""Optimiser construction, parameter EMA and device transfer used by the training loop."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UsclfError
from ..validate import non_negative, one_of, within


@dataclass
class OptimConfig:
    name: str = "adam"            # paper Sec. 3.2: Adam
    lr: float = 1e-4              # paper Sec. 3.2: fixed learning rate 0.0001
    weight_decay: float = 0.0     # paper: none mentioned
    momentum: float = 0.9         # SGD only (DeepCluster baseline: 0.9, paper 002)
    nesterov: bool = False        # SGD only; FixMatch / USB: SGD with Nesterov momentum 0.9
    schedule: str = "constant"    # constant (paper 003: fixed lr) | cosine (FixMatch: lr * cos(7 pi k / 16 K))

    def __post_init__(self):
        one_of("train.optim.name", self.name.lower(), ("adam", "adamw", "sgd"))
        non_negative("train.optim.lr", self.lr)  # 0 is allowed: a frozen run (tests check loaded weights so)
        non_negative("train.optim.weight_decay", self.weight_decay)
        within("train.optim.momentum", self.momentum, 0.0, 1.0)
        one_of("train.optim.schedule", self.schedule, ("constant", "cosine"))
        if self.nesterov and self.name.lower() != "sgd":
            raise UsclfError(f"train.optim.nesterov needs train.optim.name=sgd, got {self.name}")


def ema_decay(decay: float, step: int, warmup: bool = False) -> float:
    """The EMA decay at global step `step` (0 = the first update). With `warmup`, Mean Teacher's official code
    (Tarvainen & Valpola 2017): min(1 - 1 / (step + 1), decay), the plain mean of the weights so far until it
    reaches `decay`; without it a short run's EMA keeps decay^steps of the initial weights (0.999^210 = 0.81)."""
    return min(1.0 - 1.0 / (step + 1), decay) if warmup else decay


class EMA:
    """Exponential moving average of parameters; buffers (BatchNorm statistics) are copied."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        if not 0.0 < decay < 1.0:
            raise UsclfError(f"ema decay must be in (0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> None:
        d = ema_decay(self.decay, step, self.warmup)
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.mul_(d).add_(p.detach().to(e.dtype), alpha=1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(sd)


def to_device(obj: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move tensors in nested dicts/lists/tuples to `device` (4-D float tensors optionally channels_last)."""
    if isinstance(obj, torch.Tensor):
        t = obj.to(device, non_blocking=True)
        if channels_last and t.ndim == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    if isinstance(obj, dict):
        return {k: to_device(v, device, channels_last) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(to_device(v, device, channels_last) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, channels_last) for v in obj)
    return obj


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD from the config."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise UsclfError("no trainable parameters to optimise")
    name = cfg.name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    raise UsclfError(f"unknown optimizer '{cfg.name}'; valid: adam, adamw, sgd")


def lr_at(cfg: OptimConfig, step: int, total_steps: int | None) -> float:
    """Learning rate of optimiser step `step` (0-based) of `total_steps`. FixMatch's cosine decay
    lr * cos(7 pi k / (16 K)) ends at ~0.2 lr, not 0 (Sohn et al. 2020, Sec. 3; USB's get_cosine_schedule)."""
    if cfg.schedule == "constant" or not total_steps:
        return cfg.lr
    return cfg.lr * math.cos(7.0 * math.pi * min(step, total_steps) / (16.0 * total_steps))
