"""Torch Dataset over a cached dataset folder (memory-mapped uint8 images + manifest).

`ds[(i, aug_seed)]` returns the configured views (e.g. ("weak", "weak") for PICA, ("weak", "strong")
for FixMatch), each seeded from (aug_seed, view position), so the images depend only on the sampler's
seeds. `ds[i]` (a plain int, used by evaluation and prediction) returns one deterministic `eval` view.

With `augment.backend=device` a training item is instead the uint8 image and the random draws of its
views ({'raw', 'aug'}); `DeviceAugmentLoader` (usclf/data/device_augment.py) makes the views on the device.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UsclfError
from .cache import IMAGES, CachedDataset
from .device_augment import view_params
from .transforms import KINDS, AugmentConfig, build_transform


def view_seed(aug_seed: int, view: int) -> int:
    """Seed of view `view` of a sample whose sampler seed is `aug_seed`."""
    return int(np.random.SeedSequence([int(aug_seed), int(view)]).generate_state(1, dtype=np.uint32)[0])


class UltrasoundDataset(Dataset):
    """Images of the manifest rows `rows` of `data`, as normalised 1 x H x W float tensors.

    Item: {'views': [tensor 1 x S x S, ...], 'y': float tensor C (-1 where unlabelled), 'row': manifest row}.
    Images are read one at a time from the memmap; pickling (for worker processes) carries the path,
    never the pixels.
    """

    def __init__(self, data: CachedDataset, rows: Sequence[int] | np.ndarray | None = None,
                 views: Sequence[str] = ("weak",), aug: AugmentConfig | None = None):
        n = len(data.manifest)
        self.rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= n):
            raise UsclfError(f"dataset rows must lie in 0..{n - 1}, got {int(self.rows.min())}..{int(self.rows.max())}")
        self.views = tuple(views)
        bad = [v for v in self.views if v not in KINDS]
        if not self.views or bad:
            raise UsclfError(f"dataset views must be a non-empty list of {', '.join(KINDS)}; got {list(views)}")
        self.aug = aug or AugmentConfig()
        self.classes = list(data.classes)
        df = data.manifest.iloc[self.rows]
        self.cache_rows = df["cache_row"].to_numpy(dtype=np.int64)
        self.exam_ids = df["exam_id"].astype(str).to_numpy()
        labels = data.labels(self.rows)
        self.labels = np.where(np.isnan(labels), -1.0, labels).astype(np.float32)
        self._transforms = {k: build_transform(k, self.aug) for k in {*self.views, "eval"}}
        self._path: Path | None = Path(data.root) / IMAGES if isinstance(data.images, np.memmap) else None
        self._images: np.ndarray | None = data.images

    @property
    def images(self) -> np.ndarray:
        if self._images is None:  # reopened lazily in a worker process
            self._images = np.load(self._path, mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._path is not None:
            state["_images"] = None
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(item, (tuple, list)):
            i, aug_seed = int(item[0]), int(item[1])
            kinds = self.views
        else:
            i, aug_seed, kinds = int(item), 0, ("eval",)
        img = self.images[self.cache_rows[i]]  # one H x W view of the memmap, read on demand
        if self.aug.backend == "device" and kinds != ("eval",):
            h, w = img.shape
            aug = np.stack([view_params(k, self.aug, view_seed(aug_seed, j), h, w) for j, k in enumerate(kinds)])
            return {"raw": torch.from_numpy(np.array(img, dtype=np.uint8)), "aug": torch.from_numpy(aug),
                    "y": torch.from_numpy(self.labels[i]), "row": int(self.rows[i])}
        views = [torch.from_numpy(self._transforms[k](img, view_seed(aug_seed, j)))[None]
                 for j, k in enumerate(kinds)]
        return {"views": views, "y": torch.from_numpy(self.labels[i]), "row": int(self.rows[i])}


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack each view into B x 1 x S x S, labels into B x C, rows into a LongTensor of B."""
    if not batch:
        raise UsclfError("cannot collate an empty batch")
    if "raw" in batch[0]:  # augment.backend=device: uint8 images B x H x W, draws B x views x N_PARAMS
        return {"raw": torch.stack([b["raw"] for b in batch]), "aug": torch.stack([b["aug"] for b in batch]),
                "y": torch.stack([b["y"] for b in batch]),
                "row": torch.tensor([b["row"] for b in batch], dtype=torch.long)}
    n_views = len(batch[0]["views"])
    return {
        "views": [torch.stack([b["views"][j] for b in batch]) for j in range(n_views)],
        "y": torch.stack([b["y"] for b in batch]),
        "row": torch.tensor([b["row"] for b in batch], dtype=torch.long),
    }
