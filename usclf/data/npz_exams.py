"""A digits benchmark written as exam folders: images of an `.npz` set (USPS, MNIST) grouped into "exams"
of N mixed images, PNG files + a labels CSV with one 0/1 column per class and a patient id per exam.

It lets the whole pipeline (ingest -> split -> pretrain/finetune/semisup -> report) run on a set where
semi-supervised learning is known to pay (FixMatch, Sohn et al. 2020: 40 and 250 labels on CIFAR-10/SVHN),
so the evidence run guards the semi-supervised path against regressions.

    python -m usclf.data.npz_exams ../shared/data/usps/usps.npz runs/usps_exams --per-exam 10
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..errors import UsclfError


def load_npz_digits(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8, N x H x W) and integer labels of an x_/y_ style `.npz` (train and test together,
    as the clustering papers use them)."""
    p = Path(path)
    if not p.is_file():
        raise UsclfError(f"npz file not found: {p}")
    with np.load(p, allow_pickle=False) as d:
        parts = [s for s in ("train", "val", "test") if f"x_{s}" in d.files and f"y_{s}" in d.files]
        if not parts:
            raise UsclfError(f"{p.name} has no x_train/y_train arrays (keys: {', '.join(d.files)})")
        x = np.concatenate([np.asarray(d[f"x_{s}"]) for s in parts])
        y = np.concatenate([np.asarray(d[f"y_{s}"]).reshape(-1) for s in parts]).astype(np.int64)
    if x.ndim != 3 or len(x) != len(y):
        raise UsclfError(f"{p.name}: expected N x H x W images and N labels, got {x.shape} and {y.shape}")
    if x.dtype != np.uint8:  # USPS is float in [0, 1]
        x = np.clip(np.round(x.astype(np.float64) * (255.0 if x.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    return x, y


def write_exam_folders(x: np.ndarray, y: np.ndarray, out: str | Path, per_exam: int = 10, size: int = 32,
                       seed: int = 0) -> Path:
    """Shuffle (seeded) into exams of `per_exam` images; writes OUT/export/exam_NNNNN/img_K.png and
    OUT/labels.csv (path, digit_0.., patient_id). Returns the labels CSV. Images are upscaled to `size` px
    so the 64 px pipeline's crops and augmentations have room."""
    if per_exam < 1:
        raise UsclfError(f"--per-exam must be >= 1, got {per_exam}")
    out = Path(out)
    labels = out / "labels.csv"
    if labels.is_file():
        return labels  # written before: same inputs give the same folders
    order = np.random.default_rng(seed).permutation(len(x))
    n_cls = int(y.max()) + 1
    classes = [f"digit_{k}" for k in range(n_cls)]
    rows = []
    for i, r in enumerate(order):
        exam = f"exam_{i // per_exam:05d}"
        rel = f"{exam}/img_{i % per_exam:02d}.png"
        f = out / "export" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        img = cv2.resize(x[r], (size, size), interpolation=cv2.INTER_LINEAR) if x.shape[1] != size else x[r]
        if not cv2.imwrite(str(f), img):
            raise UsclfError(f"cannot write {f}")
        rows.append([rel, *np.eye(n_cls, dtype=int)[y[r]].tolist(), exam])
    tmp = labels.with_suffix(".csv.tmp")
    pd.DataFrame(rows, columns=["path", *classes, "patient_id"]).to_csv(tmp, index=False)
    tmp.replace(labels)  # the labels CSV last: its presence means the folders are complete
    return labels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m usclf.data.npz_exams", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("npz", help="x_train/y_train[/x_test/y_test] .npz (e.g. ../shared/data/usps/usps.npz)")
    p.add_argument("out", help="folder to write export/ and labels.csv into")
    p.add_argument("--per-exam", type=int, default=10, help="images per exam folder (default 10)")
    p.add_argument("--size", type=int, default=32, help="written image size in px (default 32)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    a = p.parse_args(argv)
    try:
        x, y = load_npz_digits(a.npz)
        labels = write_exam_folders(x, y, a.out, a.per_exam, a.size, a.seed)
    except UsclfError as e:
        print(f"npz_exams: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(x)} images in {-(-len(x) // a.per_exam)} exams -> {labels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
