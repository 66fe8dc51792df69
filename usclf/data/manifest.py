"""The manifest: one row per image/frame, the single description of a dataset (docs/design.md §3.2).

Columns: image_id, path, frame, exam_id, patient_id, split, one 0/1 column per class, optional
vendor, study_date, pixel_spacing_mm, sha1, and `cache_row` (row of the uint8 cache) once ingested. Label columns are
empty (NaN) for unlabeled rows. A dataset folder holds `manifest.csv`, `images.npy` (N x H x W uint8,
memory-mapped) and `dataset.json` (class names, image size); see `usclf.data.cache`.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import UsclfError

DEFAULT_CLASSES = ["liver", "gallbladder", "kidney", "pancreas", "spleen", "bladder", "other"]
BASE_COLUMNS = ["image_id", "path", "frame", "exam_id", "patient_id", "split"]
OPTIONAL_COLUMNS = ["vendor", "study_date", "pixel_spacing_mm", "sha1", "cache_row", "source"]
SPLITS = ("unlabeled", "train", "val", "test")


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet manifest with ids as strings."""
    p = Path(path)
    if not p.is_file():
        raise UsclfError(f"manifest not found: {p}")
    if p.suffix == ".parquet":
        df = pd.read_parquet(p)
    else:
        df = pd.read_csv(p, dtype={"image_id": str, "exam_id": str, "patient_id": str, "split": str,
                                   "path": str, "vendor": str, "study_date": str, "sha1": str})
    return df


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    """Write CSV or Parquet (by extension) atomically."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    if p.suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False)
    tmp.replace(p)


def validate_manifest(df: pd.DataFrame, classes: list[str], root: str | Path | None = None,
                      check_files: bool = False) -> list[str]:
    """Return one clear line per problem (empty list = valid).

    Checks: required columns, unknown extra columns (likely unknown classes), split values, duplicated
    image_id, a patient in two splits, labels on unlabeled rows, missing/malformed labels on labelled
    rows, and (optionally) missing files.
    """
    problems: list[str] = []
    missing = [c for c in BASE_COLUMNS + list(classes) if c not in df.columns]
    if missing:
        problems.append(f"missing columns: {', '.join(missing)}")
    known = set(BASE_COLUMNS) | set(OPTIONAL_COLUMNS) | set(classes)
    unknown = [c for c in df.columns if c not in known]
    if unknown:
        problems.append(f"unknown columns (not a configured class): {', '.join(map(str, unknown))}; "
                        f"classes are {', '.join(classes)}")
    if missing:
        return problems
    bad_split = sorted(set(df["split"].astype(str)) - set(SPLITS))
    if bad_split:
        problems.append(f"unknown split values: {', '.join(bad_split)} (allowed: {', '.join(SPLITS)})")
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        problems.append(f"duplicated image_id: {dup.iloc[0]} (and {len(dup) - 1} more)" if len(dup) > 1
                        else f"duplicated image_id: {dup.iloc[0]}")
    per_patient = df.groupby("patient_id")["split"].nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        pid = leaked.index[0]
        splits = sorted(df.loc[df["patient_id"] == pid, "split"].unique())
        problems.append(f"patient leakage: {len(leaked)} patient(s) in more than one split, "
                        f"e.g. {pid} in {', '.join(splits)}")
    labels = df[list(classes)].apply(pd.to_numeric, errors="coerce")
    raw = df[list(classes)]
    malformed = raw.notna() & labels.isna()
    if malformed.any().any():
        col = malformed.any().idxmax()
        problems.append(f"malformed label values in column '{col}': {raw.loc[malformed[col], col].iloc[0]!r}")
    unl = df["split"] == "unlabeled"
    if labels[unl].notna().any().any():
        problems.append(f"labels on unlabeled rows: {int(labels[unl].notna().any(axis=1).sum())} row(s)")
    lab = ~unl
    if lab.any():
        vals = labels[lab]
        if vals.isna().any().any():
            problems.append(f"missing labels on labelled rows: {int(vals.isna().any(axis=1).sum())} row(s)")
        ok = vals.isin([0, 1]) | vals.isna()
        if not ok.all().all():
            problems.append("label values must be 0 or 1")
    if check_files:
        base = Path(root) if root is not None else Path(".")
        paths = df["path"].astype(str).unique()
        gone = [p for p in paths if not (base / p).exists()]
        if gone:
            problems.append(f"missing files: {len(gone)}, e.g. {gone[0]}")
    return problems


def check_manifest(df: pd.DataFrame, classes: list[str], **kw) -> None:
    """Raise UsclfError listing every problem, one per line."""
    problems = validate_manifest(df, classes, **kw)
    if problems:
        raise UsclfError("invalid manifest: " + "; ".join(problems))


def read_image_ids(path: str | Path, what: str = "image id list") -> list[str]:
    """The image_id column of a CSV (frames labelled so far, frames to train on); one-line errors."""
    if not Path(path).is_file():
        raise UsclfError(f"{what} not found: {path}")
    try:
        ids = pd.read_csv(path, dtype=str)
    except pd.errors.EmptyDataError:
        raise UsclfError(f"{what} {path} is empty: needs an image_id column (the manifest's image ids)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UsclfError(f"{what} {path} is not a readable CSV: {str(e).splitlines()[0][:200]}") from None
    if "image_id" not in ids.columns:
        raise UsclfError(f"{path}: needs an image_id column (the manifest's image ids)")
    out = ids["image_id"].dropna().str.strip()
    out = out[out != ""].tolist()
    if not out:
        raise UsclfError(f"{what} {path} lists no image ids")
    return out
