"""The dataset folder: `images.npy` (N x H x W uint8, memory-mapped), `manifest.csv`, `dataset.json`."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UsclfError
from .manifest import read_manifest, write_manifest

IMAGES = "images.npy"
MANIFEST = "manifest.csv"
META = "dataset.json"


@dataclass
class CachedDataset:
    """A loaded dataset folder: memory-mapped images + manifest + metadata."""
    root: Path
    images: np.ndarray          # N x H x W uint8 memmap; row i = manifest row with cache_row == i
    manifest: pd.DataFrame
    classes: list[str]
    meta: dict

    def labels(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Float32 label matrix (NaN for unlabeled) for the given manifest rows (all by default)."""
        df = self.manifest if rows is None else self.manifest.iloc[rows]
        return df[self.classes].to_numpy(dtype=np.float32)


def write_meta(root: str | Path, meta: dict) -> None:
    p = Path(root) / META
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(p)


def open_dataset(root: str | Path, manifest: str | Path | None = None) -> CachedDataset:
    """Open a dataset folder written by ingest (optionally with another manifest, e.g. after split)."""
    root = Path(root)
    for name in (IMAGES, META):
        if not (root / name).is_file():
            raise UsclfError(f"{root} is not a usclf dataset folder (no {name}); run `usclf ingest` first")
    meta = json.loads((root / META).read_text())
    images = np.load(root / IMAGES, mmap_mode="r")
    df = read_manifest(manifest if manifest is not None else root / MANIFEST)
    if "cache_row" not in df.columns:
        raise UsclfError(f"manifest for {root} has no cache_row column")
    if len(df) and int(df["cache_row"].max()) >= len(images):
        raise UsclfError(f"manifest refers to cache row {int(df['cache_row'].max())} but the cache has {len(images)}")
    if manifest is not None and Path(manifest).resolve() != (root / MANIFEST).resolve() and (root / MANIFEST).is_file():
        _check_same_ingest(df, read_manifest(root / MANIFEST), Path(manifest), root)
    return CachedDataset(root=root, images=images, manifest=df.reset_index(drop=True),
                         classes=list(meta["classes"]), meta=meta)


def _check_same_ingest(split: pd.DataFrame, base: pd.DataFrame, path: Path, root: Path) -> None:
    """A split manifest must describe this ingest's cache: every row's image id, file hash and cache row as in
    `manifest.csv`. A split file left from an earlier ingest into the same folder fails here."""
    keys = [c for c in ("image_id", "sha1", "cache_row") if c in split.columns and c in base.columns]
    if "image_id" not in keys or "cache_row" not in keys:
        return
    a = split[keys].astype(str).agg("|".join, axis=1)
    b = set(base[keys].astype(str).agg("|".join, axis=1))
    stale = ~a.isin(b)
    if stale.any():
        raise UsclfError(f"{path.name} does not match the current ingest of {root} ({int(stale.sum())} of "
                         f"{len(split)} rows point at other images): it is left from an earlier ingest; "
                         f"run `usclf split {root}` again")


class CacheWriter:
    """Append frames to a growing uint8 cache, then finalise to `images.npy` atomically.

    The frames go straight into `images.npy.part` after a reserved 128-byte .npy header, which `close`
    fills in before the rename: one copy of the data on disk (never two), and a full disk is an OSError on
    `write` (not a SIGBUS from a memory map). `abort` removes the part file.
    """

    HEADER = 128  # a .npy v1 header for (N, S, S) uint8 fits 128 bytes for any N below 10**20

    def __init__(self, root: str | Path, size: int, chunk: int = 1024):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.size = size
        self._tmp = self.root / (IMAGES + ".part")
        self._fh = open(self._tmp, "wb")
        self._fh.write(b"\0" * self.HEADER)
        self.n = 0

    def add(self, img: np.ndarray) -> int:
        """Append one H x W uint8 image; returns its cache row."""
        if img.shape != (self.size, self.size) or img.dtype != np.uint8:
            raise ValueError(f"cache expects {self.size}x{self.size} uint8, got {img.shape} {img.dtype}")
        self._fh.write(np.ascontiguousarray(img).tobytes())
        self.n += 1
        return self.n - 1

    def close(self) -> Path:
        """Fill in the .npy header, flush to disk and rename into place."""
        import io
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, {"descr": "|u1", "fortran_order": False,
                                                    "shape": (self.n, self.size, self.size)})
        assert len(head.getvalue()) == self.HEADER
        self._fh.seek(0)
        self._fh.write(head.getvalue())
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        out = self.root / IMAGES
        self._tmp.replace(out)
        return out

    def abort(self) -> None:
        """Drop the partial cache (after an error): nothing half-written is left behind."""
        try:
            self._fh.close()
        except OSError:  # closing flushes: on a full disk that fails too
            pass
        self._tmp.unlink(missing_ok=True)


def save_dataset(root: str | Path, images: np.ndarray, manifest: pd.DataFrame, classes: list[str],
                 meta: dict | None = None) -> CachedDataset:
    """Write an in-memory dataset (used by adapters such as MedMNIST .npz)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / (IMAGES + ".tmp")
    np.save(open(tmp, "wb"), np.ascontiguousarray(images, dtype=np.uint8))
    tmp.replace(root / IMAGES)
    df = manifest.copy()
    if "cache_row" not in df.columns:
        df["cache_row"] = np.arange(len(df))
    write_manifest(df, root / MANIFEST)
    m = {"classes": list(classes), "image_size": int(images.shape[-1]), "n_images": int(len(images))}
    m.update(meta or {})
    write_meta(root, m)
    return open_dataset(root)
