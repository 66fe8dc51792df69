"""What every stage shares: data/model config sections, opening the split dataset (batched inference is
`usclf/eval/inference.py`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.cache import CachedDataset, open_dataset
from ..data.transforms import AugmentConfig
from ..errors import UsclfError
from ..models.modelfile import Preprocess, data_hash


@dataclass
class DataConfig:
    """Which dataset and how batches are drawn from it."""
    path: str = ""                       # dataset folder written by `usclf ingest`
    split_seed: int = 0                  # use manifest_split_seed<S>.csv written by ingest/split
    max_images_per_exam: int | None = 16  # memory cap per exam (docs/design.md §3.5); paper exams have ~13 images
    batch_size: int = 64                 # image-level batches (supervised steps, inference)
    workers: int = 0                     # DataLoader worker processes (0 = in the training process)


@dataclass
class ExamDataConfig(DataConfig):
    """DataConfig of a stage that batches whole exams (pretrain); semisup sizes its unlabelled exam batches
    with `unlabeled_exams`, finetune batches images, so neither has this key."""
    exams_per_batch: int = 16            # paper Sec. 3.2: 16 exams per step


@dataclass
class ModelConfig:
    """Feature extractor f: any timm backbone with one input channel."""
    backbone: str = "resnet18"           # paper Sec. 3.2: ResNet18 for every experiment
    init: str = "random"                 # random | imagenet | PATH (usclf model/checkpoint)
    imagenet_weights: str | None = None  # local file with timm ImageNet weights (never downloaded)


def open_split(cfg: DataConfig) -> tuple[CachedDataset, str]:
    """The dataset with its patient-disjoint split manifest, and a short hash identifying both."""
    if not cfg.path:
        raise UsclfError("no dataset given: set data.path (a folder written by `usclf ingest`)")
    manifest = Path(cfg.path) / f"manifest_split_seed{cfg.split_seed}.csv"
    if not manifest.is_file():
        raise UsclfError(f"{manifest} not found: run `usclf split {cfg.path} --seed {cfg.split_seed}` first")
    ds = open_dataset(cfg.path, manifest)
    return ds, data_hash(manifest, len(ds.images))


def rows_in(ds: CachedDataset, splits: list[str] | tuple[str, ...], what: str = "") -> np.ndarray:
    """Manifest row indices whose split is one of `splits` (one-line error if there are none)."""
    rows = np.flatnonzero(ds.manifest["split"].isin(list(splits)).to_numpy())
    if len(rows) == 0:
        raise UsclfError(f"no {what or 'images'} in split(s) {', '.join(splits)} of {ds.root}")
    return rows


def preprocess_meta(ds: CachedDataset, aug: AugmentConfig) -> Preprocess:
    """What `predict` must repeat on raw files: the ingest reading settings + network input size/normalisation."""
    ing = dict(ds.meta.get("config", {}) or {})
    keep = {k: ing[k] for k in ("size", "crop", "doppler_chroma", "doppler_fraction", "resize") if k in ing}
    keep.setdefault("size", int(ds.meta.get("image_size", aug.size)))
    return Preprocess(ingest=keep, input_size=int(aug.size), mean=float(aug.mean), std=float(aug.std))
