"""The self-describing model file: architecture, weights, classes, vocabulary, thresholds, preprocessing.

Everything `usclf evaluate` and `usclf predict` need is inside one `.pt` file, loaded with
`torch.load(weights_only=True)` (only tensors, numbers, strings, lists and dicts are stored).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from ..errors import UsclfError
from ..train.checkpoint import cpu_state_dict, load_checkpoint, save_checkpoint
from .heads import build_from_spec, model_spec

FORMAT = "usclf-model"
VERSION = 1


def save_model_file(path: str | Path, model: torch.nn.Module, **meta: Any) -> Path:
    """Atomically write `model` with its spec and metadata (classes, vocab, thresholds, preprocess, ...)."""
    model = getattr(model, "module", model)
    state = {"format": FORMAT, "version": VERSION, "spec": model_spec(model),
             "state_dict": cpu_state_dict(model), "meta": meta}
    return save_checkpoint(path, state)


def load_model_file(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, meta) from a model file; one-line error if it is not one."""
    obj = load_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UsclfError(f"{path} is not a usclf model file (write one with pretrain/finetune/semisup)")
    model = build_from_spec(obj["spec"])
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise UsclfError(f"{path}: weights do not fit the described architecture: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), dict(obj.get("meta", {}))


def update_model_meta(path: str | Path, out: str | Path | None = None, **meta: Any) -> Path:
    """Copy a model file with extra/updated metadata (e.g. thresholds chosen by evaluate)."""
    obj = load_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UsclfError(f"{path} is not a usclf model file")
    obj["meta"] = {**obj.get("meta", {}), **meta}
    return save_checkpoint(out or path, obj)


def data_hash(manifest_path: str | Path, n_images: int) -> str:
    """Short hash identifying a dataset version (manifest bytes + cache size), logged with every run."""
    h = hashlib.sha1(Path(manifest_path).read_bytes())
    h.update(str(n_images).encode())
    return h.hexdigest()[:12]
