"""The labels CSV of `usclf ingest`: `path` [, `frame`] + one 0/1/empty column per class [, `patient_id`,
`exam_id`]. Read and validated in full before any file is decoded; every problem is one line naming the row.

A row without class values is allowed: it only passes a patient or exam id for that file (this is how an
export without DICOM PatientID gets patient-disjoint splits).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsclfError

LABEL_META = ("path", "frame", "patient_id", "exam_id", "doppler")
_LABEL_META = LABEL_META


def read_labels_csv(path: str | Path, classes: list[str]) -> pd.DataFrame:
    """Read and validate a labels CSV: `path` [, `frame`] + one 0/1/empty column per class
    [, `patient_id`, `exam_id`, `doppler` (ignored)]. Any problem -> one-line UsclfError."""
    p = Path(path)
    if not p.is_file():
        raise UsclfError(f"labels CSV not found: {p}")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UsclfError(f"labels CSV {p.name} cannot be parsed: {str(e).splitlines()[0]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if "path" not in df.columns:
        raise UsclfError(f"labels CSV {p.name} has no 'path' column (columns: {', '.join(df.columns)})")
    unknown = [c for c in df.columns if c not in _LABEL_META and c not in classes]
    if unknown:
        raise UsclfError(f"labels CSV {p.name}: unknown class column '{unknown[0]}' "
                         f"(classes: {', '.join(classes)})")
    missing = [c for c in classes if c not in df.columns]
    if missing:
        raise UsclfError(f"labels CSV {p.name}: missing class column(s) {', '.join(missing)}")
    df = df.apply(lambda s: s.str.strip())
    out = pd.DataFrame({"path": df["path"].map(norm_rel)})
    for i, v in enumerate(df["path"]):
        if not v:
            raise UsclfError(f"labels CSV {p.name}, line {i + 2}: empty path")
    frames = df["frame"] if "frame" in df.columns else pd.Series([""] * len(df))
    fr: list[Any] = []
    for i, v in enumerate(frames):
        if v == "":
            fr.append(pd.NA)
        elif v.isdigit() or (v.endswith(".0") and v[:-2].isdigit()):
            fr.append(int(float(v)))
        else:
            raise UsclfError(f"labels CSV {p.name}, line {i + 2}: frame {v!r} is not a non-negative integer")
    out["frame"] = pd.array(fr, dtype="Int64")
    allowed = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "": pd.NA}
    for c in classes:
        bad = ~df[c].isin(list(allowed))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise UsclfError(f"labels CSV {p.name}, line {i + 2}: column '{c}' has {df[c].iloc[i]!r} "
                             f"(allowed: 0, 1 or empty)")
        out[c] = pd.array([allowed[v] for v in df[c]], dtype="Int64")
    filled = out[classes].notna()
    partial = filled.any(axis=1) & ~filled.all(axis=1)
    if partial.any():
        i = int(np.flatnonzero(partial.to_numpy())[0])
        col = classes[int(np.flatnonzero(~filled.iloc[i].to_numpy())[0])]
        raise UsclfError(f"labels CSV {p.name}, line {i + 2}: labelled row has no value for '{col}'")
    for c in ("patient_id", "exam_id"):
        out[c] = df[c] if c in df.columns else ""
    keys = [(a, None if pd.isna(b) else int(b)) for a, b in zip(out["path"], out["frame"])]
    dup = pd.Series(keys).duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise UsclfError(f"labels CSV {p.name}, line {i + 2}: duplicate row for {out['path'].iloc[i]}"
                         + ("" if pd.isna(out["frame"].iloc[i]) else f" frame {out['frame'].iloc[i]}"))
    _check_frame_conflicts(out, classes, p.name)
    return out


def _check_frame_conflicts(df: pd.DataFrame, classes: list[str], name: str) -> None:
    """A row with a frame and the same file's row without one must agree (else which one wins is arbitrary)."""
    whole = {path: i for i, (path, f) in enumerate(zip(df["path"], df["frame"])) if pd.isna(f)}
    for i, (path, f) in enumerate(zip(df["path"], df["frame"])):
        j = whole.get(path)
        if pd.isna(f) or j is None:
            continue
        for c in classes + ["patient_id", "exam_id"]:
            a, b = df[c].iloc[i], df[c].iloc[j]
            same = (pd.isna(a) and pd.isna(b)) or (not pd.isna(a) and not pd.isna(b) and a == b)
            if same or (c in ("patient_id", "exam_id") and "" in (a, b)):  # an id given once is no conflict
                continue
            raise UsclfError(f"labels CSV {name}, lines {j + 2} and {i + 2}: conflicting rows for {path}: "
                             f"{c} is {_show(b)} for the whole file but {_show(a)} for frame {int(f)}; "
                             "keep one of them")


def _show(v) -> str:
    return "empty" if pd.isna(v) or v == "" else repr(v) if isinstance(v, str) else str(v)


def norm_rel(p: str) -> str:
    """Normalise a relative path to POSIX form without a leading './'."""
    return str(PurePosixPath(*PurePosixPath(str(p).replace("\\", "/")).parts)).removeprefix("./")


class _Labels:
    """Lookup of label rows by (path, frame), falling back to (path, any frame)."""

    def __init__(self, df: pd.DataFrame | None, classes: list[str]):
        self.classes = classes
        self.rows: dict[tuple[str, int | None], int] = {}
        self.ids: dict[str, dict[str, str]] = {}
        self.used: set[int] = set()
        self.df = df
        if df is None:
            return
        for i, (path, frame) in enumerate(zip(df["path"], df["frame"])):
            self.rows[(path, None if pd.isna(frame) else int(frame))] = i
            ids = self.ids.setdefault(path, {})
            for c in ("patient_id", "exam_id"):
                if df[c].iloc[i] and c not in ids:
                    ids[c] = df[c].iloc[i]

    def find(self, path: str, frame: int) -> int | None:
        i = self.rows.get((path, frame), self.rows.get((path, None)))
        if i is not None:
            self.used.add(i)
        return i
