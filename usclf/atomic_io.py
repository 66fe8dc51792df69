"""Atomic, safe model-file I/O shared by training (checkpoints) and models (model files, init weights).

Files hold only tensors, primitives, lists and dicts so they load with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UsclfError
from .paths import is_no_space, mb


def save_checkpoint(path: str | Path, state: dict[str, Any], hint: str = "") -> Path:
    """Write `state` to `path` atomically: temp file in the same folder, fsync, then os.replace.

    A full disk is one UsclfError ("no space left on device while writing the checkpoint ...", then
    `hint`): the temp file is removed and whatever was at `path` before is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    sink = None
    try:
        with os.fdopen(fd, "wb") as fh:
            sink = _WriteErrors(fh)
            torch.save(state, sink)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if (sink is not None and is_no_space(sink.error)) or _chain_has_no_space(e):
            raise UsclfError(_no_space_message(path, state, hint)) from None
        raise
    return path


class _WriteErrors:
    """File wrapper for torch.save: torch's zip writer turns a failed write into a RuntimeError
    ('unexpected pos ...'), so the OSError behind it (ENOSPC) is kept here."""

    def __init__(self, fh) -> None:
        self.fh, self.error = fh, None

    def write(self, b) -> int:
        try:
            return self.fh.write(b)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError as e:
            self.error = self.error or e
            raise


def _chain_has_no_space(e: BaseException | None) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if is_no_space(e):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _no_space_message(path: Path, state: Any, hint: str) -> str:
    try:
        free = f", {mb(shutil.disk_usage(path.parent).free)} free"
    except OSError:
        free = ""
    msg = (f"no space left on device while writing the checkpoint {path} (about {mb(_tensor_bytes(state))}"
           f"{free}); the partial file was removed and the file there before is unchanged")
    return f"{msg}; {hint}" if hint else msg


def _tensor_bytes(obj: Any) -> int:
    """Rough size of a checkpoint: the bytes of the tensors it holds."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


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
