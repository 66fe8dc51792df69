"""Atomic, safe model-file I/O shared by training (checkpoints) and models (model files, init weights).

Files hold only tensors, primitives, lists and dicts so they load with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UsclfError


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically: temp file in the same folder, fsync, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; unreadable or foreign files raise UsclfError."""
    path = Path(path)
    if not path.is_file():
        raise UsclfError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle/zip errors come in many types; report one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsclfError(f"cannot read checkpoint {path}: {first[:200]}") from None
    if not isinstance(obj, dict):
        raise UsclfError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop `prefix` from keys that have it (e.g. DDP's 'module.')."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copy of a model's state dict (survives later in-place updates)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
