"""Adapters that turn public data sets into the usclf dataset folder (docs/design.md §3.7).

- `from_class_folders(root, out, size)`: ROOT/<class>/... image trees (single-label, no `other`);
- `from_npz(npz_path, out, size)`: MedMNIST `.npz` (`train_images`, `train_labels`, ...) or
  USPS/MNIST style (`x_train`, `y_train`, `x_test`, `y_test`); splits are kept;
- a folder tree + labels CSV is `usclf.data.ingest.ingest(root, out, labels_csv)`.

Public sets carry no patient ids, so every file (every npz image) is its own exam and patient.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UsclfError
from .cache import CachedDataset, save_dataset
from .ingest import REPORT, REPORT_COLUMNS, _LABEL_META, norm_rel
from .manifest import BASE_COLUMNS, write_manifest
from .preprocess import pad_square, prepare_frame, resize_square
from .readers import Skip, iter_frames

_JUNK_DIRS = ("__MACOSX",)


def _check_class_names(classes: list[str]) -> None:
    clash = [c for c in classes if c in BASE_COLUMNS or c in _LABEL_META or c in ("cache_row", "sha1")]
    if clash:
        raise UsclfError(f"class name '{clash[0]}' clashes with a manifest column; rename it")
    if len(set(classes)) != len(classes):
        raise UsclfError(f"class names must be distinct, got {classes}")


def _file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def from_class_folders(root: str | Path, out: str | Path, size: int = 128, crop: bool = False,
                       progress: bool = True) -> CachedDataset:
    """One class per sub-folder of ROOT (class names = folder names, sorted); every readable frame of
    every file below a class folder becomes a row labelled with that class. Unreadable files are
    listed in `ingest_report.csv`. Colour images are converted to grey (no Doppler filter here)."""
    from tqdm import tqdm

    root = Path(root)
    if not root.is_dir():
        raise UsclfError(f"input folder not found: {root}")
    if size < 8:
        raise UsclfError(f"size must be >= 8, got {size}")
    report: list[dict] = []
    folders = []
    for d in sorted(root.iterdir()):
        if d.is_dir() and (d.name.startswith(".") or d.name in _JUNK_DIRS):
            report.append(dict(path=d.name + "/", frame="", status="skipped", frames_kept=0,
                               reason="ignored folder (hidden or archive metadata)"))
        elif d.is_dir():
            folders.append(d)
        else:
            report.append(dict(path=d.name, frame="", status="skipped", frames_kept=0,
                               reason="not inside a class folder"))
    files = [(d.name, f) for d in folders for f in sorted(d.rglob("*")) if f.is_file()]
    images: list[np.ndarray] = []
    rows: list[dict] = []
    for cls, f in tqdm(files, desc="class folders", unit="file", disable=not progress):
        rel = norm_rel(f.relative_to(root).as_posix())
        kept, reasons = 0, []
        for item in iter_frames(f):
            if isinstance(item, Skip):
                reasons.append(item.reason)
                continue
            img, reason = prepare_frame(item.array, size, crop=crop, drop_doppler=False)
            if img is None:
                reasons.append(reason)
                continue
            key = hashlib.sha1(rel.encode()).hexdigest()[:12]
            image_id = "i_" + hashlib.sha1(f"{rel}#{item.frame_index}".encode()).hexdigest()[:16]
            rows.append({"image_id": image_id,
                         "path": rel, "frame": item.frame_index, "exam_id": "e_" + key,
                         "patient_id": "p_" + key, "split": "unlabeled", "_class": cls})
            images.append(img)
            kept += 1
        sha = _file_sha1(f) if kept else ""
        for r in rows[len(rows) - kept:]:
            r["sha1"] = sha
        report.append(dict(path=rel, frame="", status="kept" if kept else "skipped", frames_kept=kept,
                           reason="; ".join(sorted(set(reasons)))))
    present = sorted({r["_class"] for r in rows})
    for d in folders:
        if d.name not in present:
            report.append(dict(path=d.name + "/", frame="", status="skipped", frames_kept=0,
                               reason="class folder without readable images (not a class)"))
    if len(present) < 2:
        raise UsclfError(f"need at least 2 class folders with readable images under {root}, "
                         f"found {len(present)}")
    _check_class_names(present)
    man = pd.DataFrame(rows)
    for c in present:
        man[c] = (man["_class"] == c).astype(int)
    man = man[BASE_COLUMNS + present + ["sha1"]]
    ds = save_dataset(out, np.stack(images), man, present,
                      {"source": root.name, "adapter": "class_folders", "crop": crop})
    write_manifest(pd.DataFrame(report, columns=REPORT_COLUMNS), Path(out) / REPORT)
    return ds


# ---------------------------------------------------------------------------------------------- npz
def _to_uint8(x: np.ndarray, name: str) -> np.ndarray:
    """Map a whole array to uint8 by its value range: [0,1] floats, [-1,1] floats, or 0..255."""
    if x.dtype == np.uint8:
        return x
    if x.dtype == bool:
        return x.astype(np.uint8) * 255
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise UsclfError(f"{name}: images contain NaN or inf")
    if np.issubdtype(x.dtype, np.floating) and lo >= 0 and hi <= 1.0:
        return np.round(x * 255.0).astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating) and lo >= -1.0 and hi <= 1.0:
        return np.round((x + 1.0) * 127.5).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return np.round(x).astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer) and lo >= 0:  # e.g. uint16: scale by the data's maximum
        return np.round(x.astype(np.float64) * (255.0 / hi)).astype(np.uint8)
    raise UsclfError(f"{name}: cannot map image values in [{lo:g}, {hi:g}] to 0..255")


def _images_nhw(x: np.ndarray, name: str) -> np.ndarray:
    """N x H x W uint8 from N x H x W, N x H x W x {1,3}, N x {1,3} x H x W or N x D (D square)."""
    import cv2

    x = np.asarray(x)
    if x.ndim == 2:
        side = int(round(np.sqrt(x.shape[1])))
        if side * side != x.shape[1]:
            raise UsclfError(f"{name}: flat images of length {x.shape[1]} are not square")
        x = x.reshape(len(x), side, side)
    if x.ndim == 4 and x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        x = np.moveaxis(x, 1, -1)
    x = _to_uint8(x, name)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    elif x.ndim == 4 and x.shape[-1] == 3:
        x = np.stack([cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY) for im in x])
    if x.ndim != 3:
        raise UsclfError(f"{name}: expected N x H x W images, got shape {x.shape}")
    return x


def _npz_splits(data, keys: set[str], name: str) -> tuple[str, list[tuple[str, str, str]]]:
    medmnist = [(s, f"{s}_images", f"{s}_labels") for s in ("train", "val", "test") if f"{s}_images" in keys]
    if medmnist:
        return "medmnist", medmnist
    xy = [(s, f"x_{s}", f"y_{s}") for s in ("train", "val", "test") if f"x_{s}" in keys]
    if xy:
        return "xy", xy
    raise UsclfError(f"{name}: no MedMNIST (train_images, ...) or x_train/y_train arrays; "
                     f"keys: {', '.join(sorted(keys))}")


def from_npz(npz_path: str | Path, out: str | Path, size: int | None = None,
             classes: list[str] | None = None) -> CachedDataset:
    """MedMNIST-style or x_/y_-style `.npz` -> dataset folder with splits train/val/test preserved.

    Labels: N or N x 1 integers (single-label) or N x C 0/1 (multi-label). Class names `class_0..`
    unless given. `size=None` keeps the native size (padded to square)."""
    p = Path(npz_path)
    if not p.is_file():
        raise UsclfError(f"npz file not found: {p}")
    try:
        data = np.load(p, allow_pickle=False)
        keys = set(data.files)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UsclfError(f"{p.name} is not a readable .npz file ({type(e).__name__})") from None
    layout, splits = _npz_splits(data, keys, p.name)
    imgs, labs, parts = [], [], []
    for split, xk, yk in splits:
        if yk not in keys:
            raise UsclfError(f"{p.name}: '{xk}' has no matching '{yk}'")
        x, y = _images_nhw(data[xk], f"{p.name}:{xk}"), np.asarray(data[yk])
        if len(x) != len(y):
            raise UsclfError(f"{p.name}: {len(x)} images in '{xk}' but {len(y)} labels in '{yk}'")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim not in (1, 2) or not np.all(np.isfinite(y)) or np.any(y < 0) or np.any(y != np.round(y)):
            raise UsclfError(f"{p.name}: '{yk}' must hold non-negative integer class indices or 0/1 columns")
        if y.ndim == 2 and np.any(y > 1):
            raise UsclfError(f"{p.name}: multi-label '{yk}' must hold only 0/1")
        imgs.append(x)
        labs.append(y.astype(np.int64))
        parts.append(split)
    if len({lab.ndim for lab in labs}) != 1 or len({x.shape[1:] for x in imgs}) != 1:
        raise UsclfError(f"{p.name}: splits disagree in image shape or label layout")
    multi = labs[0].ndim == 2
    n_cls = labs[0].shape[1] if multi else int(max(int(lab.max()) for lab in labs if len(lab)) + 1)
    if classes is not None:
        if multi and len(classes) != n_cls or not multi and len(classes) < n_cls:
            raise UsclfError(f"{p.name}: labels need {n_cls} class names, got {len(classes)}")
        n_cls = len(classes)
    names = list(classes) if classes is not None else [f"class_{k}" for k in range(n_cls)]
    _check_class_names(names)
    rows, out_imgs = [], []
    for split, x, y in zip(parts, imgs, labs):
        onehot = y if multi else np.eye(n_cls, dtype=np.int64)[y]
        for i in range(len(x)):
            key = f"{split}_{i:06d}"
            rows.append([key, p.name, i, "e_" + key, "p_" + key, split, *onehot[i].tolist()])
        out_imgs.append(np.stack([pad_square(im) if size is None else resize_square(im, size) for im in x])
                        if len(x) else np.zeros((0,) + (size or max(x.shape[1:]),) * 2, np.uint8))
    man = pd.DataFrame(rows, columns=BASE_COLUMNS + names)
    return save_dataset(out, np.concatenate(out_imgs), man, names,
                        {"source": p.name, "adapter": f"npz:{layout}"})
