"""Checkpoints: atomic writes, safe (`weights_only=True`) reads, RNG state capture, architecture checks.

Checkpoints hold only tensors, primitives, lists and dicts so they load with `weights_only=True`:
RNG states are tensors or lists of ints, never numpy arrays or arbitrary objects.
"""
from __future__ import annotations

import inspect
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic_io import cpu_state_dict, load_checkpoint, save_checkpoint, strip_prefix  # noqa: F401 (re-exported)
from ..errors import UsclfError

FORMAT = "usclf-checkpoint-1"


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


def sampler_with(loader: Any, method: str, where: tuple[str, ...] = ("batch_sampler", "sampler")) -> Any:
    """The loader's batch sampler (or sampler) that has `method`, else None."""
    for name in where:
        s = getattr(loader, name, None)
        if s is not None and callable(getattr(s, method, None)):
            return s
    return None


def sampler_state(sampler: Any, consumed: int) -> Any:
    """The sampler's resume state. A DataLoader with workers prefetches ahead of the loop, so a sampler
    whose `state_dict` takes `consumed` is told how many batches the loop has actually used."""
    if sampler is None:
        return None
    try:
        takes = "consumed" in inspect.signature(sampler.state_dict).parameters
    except (TypeError, ValueError):
        takes = False
    return sampler.state_dict(consumed=consumed) if takes else sampler.state_dict()
