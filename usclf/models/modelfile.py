"""The self-describing model file: architecture, weights and one typed, versioned `ModelInfo`.

Everything `usclf evaluate` and `usclf predict` need is inside one `.pt` file, loaded with
`torch.load(weights_only=True)` (only tensors, numbers, strings, lists and dicts are stored). The file is
written by `save_model_file` and read by `load_model_file` only; version 1 files (a flat `meta` dict)
are read by conversion, a newer version than this usclf knows gives one clear line.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from ..atomic_io import cpu_state_dict, load_checkpoint, save_checkpoint
from ..errors import UsclfError
from .heads import build_from_spec, model_spec

FORMAT = "usclf-model"
VERSION = 2


@dataclass
class Preprocess:
    """What `predict` must repeat on a raw file: ingest's reading settings + the network input."""
    ingest: dict = field(default_factory=dict)  # size, crop, doppler_chroma, doppler_fraction, resize (ingest config)
    input_size: int | None = None        # network input side (augment.size); None = ingest.size
    mean: float | None = None            # input normalisation; None = AugmentConfig's default
    std: float | None = None

    def augment_kwargs(self, fallback_size: int) -> dict:
        """AugmentConfig(**this) for the eval transform of this model."""
        size = self.input_size or self.ingest.get("size") or fallback_size
        return {"size": int(size), **{k: float(v) for k, v in (("mean", self.mean), ("std", self.std)) if v is not None}}


@dataclass
class ModelInfo:
    """Everything a model file says about its model besides the architecture (which is `spec`)."""
    classes: list[str]
    stage: str = ""                      # pretrain | finetune | semisup ("" = written by hand / a test)
    method: str = ""                     # lsd, pica, supervised, fixmatch-twohead, ...
    preprocess: Preprocess | None = None
    thresholds: list[float] = field(default_factory=list)   # per class, chosen on validation
    matching: list[list[float]] = field(default_factory=list)  # cluster -> class mix (Algorithm 1), K x C
    soft_matching: bool = False
    vocab: list[list[int]] = field(default_factory=list)     # label-combination vocabulary (cluster/two heads)
    data_hash: str = ""
    provenance: dict = field(default_factory=dict)  # how it was trained: steps, epochs, init, fraction, seed, ...

    def __post_init__(self):
        self.classes = [str(c) for c in self.classes]
        if isinstance(self.preprocess, dict):
            self.preprocess = Preprocess(**self.preprocess)


_INFO_KEYS = {f.name for f in fields(ModelInfo)}


def _from_v1(meta: dict) -> ModelInfo:
    """A version 1 file's flat meta dict -> ModelInfo (unknown keys become provenance)."""
    known = {k: v for k, v in meta.items() if k in _INFO_KEYS and k != "provenance"}
    pre = known.get("preprocess")
    if isinstance(pre, dict):
        known["preprocess"] = Preprocess(**{k: pre[k] for k in ("ingest", "input_size", "mean", "std") if k in pre})
    known.setdefault("classes", [])
    return ModelInfo(**known, provenance={k: v for k, v in meta.items() if k not in _INFO_KEYS})


def save_model_file(path: str | Path, model: torch.nn.Module, info: ModelInfo) -> Path:
    """Atomically write `model` with its spec and `info`."""
    model = getattr(model, "module", model)
    state = {"format": FORMAT, "version": VERSION, "spec": model_spec(model),
             "state_dict": cpu_state_dict(model), "info": asdict(info)}
    return save_checkpoint(path, state)


def _read(path: str | Path) -> tuple[dict, ModelInfo]:
    p = Path(path)
    if p.is_dir():
        raise UsclfError(f"{path} is a folder, not a usclf model file (give its model.pt)")
    if p.is_file():
        with open(p, "rb") as fh:
            head = fh.read(4)
        if head[:2] != b"PK" and head[:1] != b"\x80":  # neither torch's zip format nor a legacy pickle
            raise UsclfError(f"{path} is not a usclf model file (not a PyTorch file; write one with "
                             "pretrain/finetune/semisup)")
    obj = load_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UsclfError(f"{path} is not a usclf model file (write one with pretrain/finetune/semisup)")
    version = obj.get("version")
    if version == 1:
        return obj, _from_v1(dict(obj.get("meta", {})))
    if version != VERSION:
        raise UsclfError(f"{path} is a usclf model file of version {version}; this usclf reads versions 1-{VERSION}: "
                         "upgrade usclf (or retrain with this one)")
    return obj, ModelInfo(**obj["info"])


def read_model_info(path: str | Path) -> ModelInfo:
    """The ModelInfo of a model file, without building the network."""
    return _read(path)[1]


def load_model_file(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelInfo]:
    """(model in eval mode, its ModelInfo) from a model file; one-line error if it is not one."""
    obj, info = _read(path)
    model = _build_loaded(obj["spec"], obj["state_dict"])
    if model is None:
        model = build_from_spec(obj["spec"])
        try:
            model.load_state_dict(obj["state_dict"])
        except RuntimeError as e:
            raise UsclfError(f"{path}: weights do not fit the described architecture: "
                             f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval(), info


def _build_loaded(spec: dict, state: dict) -> torch.nn.Module | None:
    """The model built on the meta device with the file's tensors assigned: skips the random init, a
    sizeable part of `usclf predict` on a few hundred images. None (the caller builds it the plain way)
    unless every parameter and buffer comes from `state` with the same shape and dtype."""
    try:
        with torch.device("meta"):
            model = build_from_spec(spec)
        own = dict(model.named_parameters()) | dict(model.named_buffers())
        if set(own) != set(state) or any(not isinstance(state[k], torch.Tensor) or state[k].shape != t.shape
                                         or state[k].dtype != t.dtype for k, t in own.items()):
            return None
        model.load_state_dict(state, assign=True)
    except Exception:
        return None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return None
    return model


def update_model_info(path: str | Path, out: str | Path | None = None, **changes: Any) -> Path:
    """Copy a model file with some ModelInfo fields replaced (e.g. the thresholds chosen by evaluate)."""
    obj, info = _read(path)
    state = {"format": FORMAT, "version": VERSION, "spec": obj["spec"], "state_dict": obj["state_dict"],
             "info": asdict(replace(info, **changes))}
    return save_checkpoint(out or path, state)


def data_hash(manifest_path: str | Path, n_images: int) -> str:
    """Short hash identifying a dataset version (manifest bytes + cache size), logged with every run."""
    h = hashlib.sha1(Path(manifest_path).read_bytes())
    h.update(str(n_images).encode())
    return h.hexdigest()[:12]
