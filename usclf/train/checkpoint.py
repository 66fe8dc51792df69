"""Checkpoints: atomic writes, safe (`weights_only=True`) reads, RNG state capture, architecture checks.

Checkpoints hold only tensors, primitives, lists and dicts so they load with `weights_only=True`:
RNG states are tensors or lists of ints, never numpy arrays or arbitrary objects.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UsclfError

FORMAT = "usclf-checkpoint-1"


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


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states in a weights_only-loadable form."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    py = state["python"]
    random.setstate((int(py[0]), tuple(int(v) for v in py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([c.cpu() for c in cuda])


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop `prefix` from keys that have it (e.g. DDP's 'module.')."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def check_compatible(model: nn.Module, sd: dict[str, torch.Tensor], source: str | Path) -> None:
    """Raise a one-line UsclfError when `sd` was written for another architecture than `model`."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if not (missing or unexpected or shapes):
        return
    bits = []
    if missing:
        bits.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        bits.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        bits.append(f"{len(shapes)} shape mismatches (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)})")
    raise UsclfError(f"checkpoint {source} was written for another architecture: {'; '.join(bits)}")


def load_model_state(model: nn.Module, sd: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load a full state dict into `model` after checking it matches the architecture."""
    sd = strip_prefix(sd, "module.")
    check_compatible(model, sd, source)
    model.load_state_dict(sd)


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copy of a model's state dict (survives later in-place updates)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
