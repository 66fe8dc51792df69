"""`usclf ingest`: an export folder of exams -> clean uint8 cache + manifest + ingest report.

ROOT/<exam>/... is walked recursively; every file is decoded (`readers.iter_frames`), colour-Doppler
frames are dropped, the scan region is cropped and resized (`preprocess.prepare_frame`), and kept frames
are appended to the cache. Nothing aborts the walk: each file or frame that is not kept gets a row with
its reason in `ingest_report.csv`.

Privacy: patient and exam ids are written only as salted SHA-256 hashes. The salt comes from
`IngestConfig.salt`, else the environment variable USCLF_PATIENT_SALT, else a random per-run salt that is
never written anywhere (ids then differ between runs: set a salt to make later ingests of the same
patients join). Patient names are never read. The manifest `path` column holds paths relative to ROOT
as given: folder names are the user's responsibility.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np
import pandas as pd

from ..config import to_dict
from ..errors import UsclfError
from .cache import IMAGES, MANIFEST, CacheWriter, write_meta
from .manifest import BASE_COLUMNS, DEFAULT_CLASSES, write_manifest
from .preprocess import prepare_frame
from .readers import Skip, iter_frames

REPORT = "ingest_report.csv"
REPORT_COLUMNS = ["path", "frame", "status", "frames_kept", "reason"]
SALT_ENV = "USCLF_PATIENT_SALT"
_LABEL_META = ("path", "frame", "patient_id", "exam_id", "doppler")


@dataclass
class IngestConfig:
    size: int = 128                 # cache image size (square); DESIGN §3, CPU-friendly default
    doppler_chroma: float = 40.0    # pixel "coloured" when max-min over RGB > this (DESIGN §3)
    doppler_fraction: float = 0.01  # frame dropped as colour Doppler when > this fraction is coloured
    crop: bool = True               # crop to scan region (DESIGN §3: burned-in text and chrome removed)
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))  # paper's 6 organs + other
    salt: str | None = None         # id-hash salt; None -> env USCLF_PATIENT_SALT, else random
    workers: int = 0                # decoding processes (0 = in this process)


@dataclass
class IngestResult:
    out: Path
    images: Path
    manifest: Path
    report: Path
    n_files: int
    n_files_kept: int
    n_files_skipped: int
    n_frames_kept: int
    n_frames_dropped: int
    n_labelled_frames: int
    n_label_rows_unmatched: int     # labels CSV rows that matched no file/frame (likely a path typo)


# ------------------------------------------------------------------------------------------ labels
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
    return out


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


# ------------------------------------------------------------------------------------------ walk
def _walk(root: Path, exclude: Path, labels_csv: Path | None) -> tuple[list[Path], list[str]]:
    """Sorted files under root (skipping the output folder and the labels CSV) and top-level folders
    with no files."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if (d / n).resolve() != exclude)
        files.extend(d / f for f in sorted(filenames)
                     if labels_csv is None or (d / f).resolve() != labels_csv)
    top_with_files = {f.relative_to(root).parts[0] for f in files}
    empty = sorted(n.name + "/" for n in root.iterdir()
                   if n.is_dir() and n.resolve() != exclude and n.name not in top_with_files)
    return files, empty


@dataclass
class _Outcome:
    rel: str
    sha1: str
    frames: list[tuple[int, np.ndarray | None, str, dict]]  # (frame, image | None, drop reason, meta)
    skip: str = ""                                          # file-level skip reason


def _process_file(task: tuple[str, str, dict]) -> _Outcome:
    """Decode + clean one file (runs in a worker process when cfg.workers > 0)."""
    abs_path, rel, prep = task
    try:
        h = hashlib.sha1()
        with open(abs_path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out = _Outcome(rel, h.hexdigest(), [])
        for item in iter_frames(abs_path):
            if isinstance(item, Skip):
                if item.frame_index is None:
                    out.skip = item.reason
                else:
                    out.frames.append((item.frame_index, None, item.reason, {}))
                continue
            try:
                img, reason = prepare_frame(item.array, **prep)
            except Exception as e:  # one odd frame (e.g. a 1-pixel image) drops only that frame
                img, reason = None, f"error: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
            out.frames.append((item.frame_index, img, reason, item.meta))
        return out
    except Exception as e:  # never let one file end the ingest
        return _Outcome(rel, "", [], f"error: {type(e).__name__}: {' '.join(str(e).split())[:200]}")


def _outcomes(tasks: list[tuple[str, str, dict]], workers: int) -> Iterator[_Outcome]:
    if workers <= 0:
        yield from map(_process_file, tasks)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn: forking a process that may hold torch/OpenMP threads is unsafe
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        yield from ex.map(_process_file, tasks, chunksize=4)


# ------------------------------------------------------------------------------------------ ingest
def exam_key_of(rel: str, meta: dict, csv_exam_id: str = "") -> str:
    """Exam identity before hashing: DICOM StudyInstanceUID, else the labels-CSV exam id, else the top
    folder under ROOT (a file directly in ROOT is its own exam)."""
    parts = PurePosixPath(rel).parts
    if meta.get("study_uid"):
        return "exam:" + meta["study_uid"]
    if csv_exam_id:
        return "exam:" + csv_exam_id
    return "folder:" + (parts[0] if len(parts) > 1 else rel)


def _hash(prefix: str, salt: str, key: str) -> str:
    return prefix + hashlib.sha256(f"{salt}\0{key}".encode()).hexdigest()[:12]


def _resolve_salt(cfg: IngestConfig) -> tuple[str, str]:
    if cfg.salt:
        return cfg.salt, "config"
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV], "env"
    return secrets.token_hex(16), "random"


def _check_cfg(cfg: IngestConfig) -> None:
    if cfg.size < 8:
        raise UsclfError(f"ingest size must be >= 8, got {cfg.size}")
    if not 0.0 <= cfg.doppler_fraction <= 1.0:
        raise UsclfError(f"doppler_fraction must be within [0, 1], got {cfg.doppler_fraction}")
    if not cfg.classes or len(set(cfg.classes)) != len(cfg.classes):
        raise UsclfError(f"classes must be a non-empty list of distinct names, got {cfg.classes}")
    clash = [c for c in cfg.classes if c in BASE_COLUMNS or c in _LABEL_META]
    if clash:
        raise UsclfError(f"class name '{clash[0]}' clashes with a manifest column")
    if cfg.workers < 0:
        raise UsclfError(f"workers must be >= 0, got {cfg.workers}")


def ingest(root: str | Path, out: str | Path, labels_csv: str | Path | None = None,
           cfg: IngestConfig | None = None, progress: bool = True) -> IngestResult:
    """Walk ROOT, write `images.npy`, `manifest.csv`, `dataset.json` and `ingest_report.csv` in OUT."""
    from tqdm import tqdm

    cfg = cfg or IngestConfig()
    _check_cfg(cfg)
    root, out = Path(root).resolve(), Path(out).resolve()
    if not root.is_dir():
        raise UsclfError(f"input folder not found: {root}")
    if out == root:
        raise UsclfError("output folder must differ from the input folder")
    classes = list(cfg.classes)
    labels = _Labels(read_labels_csv(labels_csv, classes) if labels_csv else None, classes)
    salt, salt_source = _resolve_salt(cfg)
    files, empty_dirs = _walk(root, out, Path(labels_csv).resolve() if labels_csv else None)
    if not files:
        raise UsclfError(f"no files under {root}")
    prep = dict(size=cfg.size, crop=cfg.crop, doppler_chroma=cfg.doppler_chroma,
                doppler_fraction=cfg.doppler_fraction)
    tasks = [(str(f), norm_rel(f.relative_to(root).as_posix()), prep) for f in files]

    out.mkdir(parents=True, exist_ok=True)
    writer = CacheWriter(out, cfg.size)
    rows: list[dict] = []
    report: list[dict] = [dict(path=d, frame="", status="skipped", frames_kept=0, reason="empty exam folder")
                          for d in empty_dirs]
    n_dropped = 0
    try:
        for o in tqdm(_outcomes(tasks, cfg.workers), total=len(tasks), desc="ingest", unit="file",
                      disable=not progress):
            kept = [f for f in o.frames if f[1] is not None]
            dropped = [f for f in o.frames if f[1] is None]
            n_dropped += len(dropped)
            for fi, img, _, meta in kept:
                rows.append(_manifest_row(o, fi, meta, writer.add(img), labels, salt))
            for fi, _, _, _ in dropped:
                labels.find(o.rel, fi)
            report.append(dict(path=o.rel, frame="", status="kept" if kept else "skipped",
                               frames_kept=len(kept), reason=_file_reason(o, kept, dropped)))
            if len(o.frames) > 1:
                report += [dict(path=o.rel, frame=fi, status="skipped", frames_kept=0, reason=r)
                           for fi, _, r, _ in dropped]
    except BaseException:
        writer._fh.close()
        writer._tmp.unlink(missing_ok=True)
        raise
    writer.close()
    return _finish(root, out, cfg, classes, rows, report, labels, salt_source, len(files), n_dropped)


def _file_reason(o: _Outcome, kept: list, dropped: list) -> str:
    if not o.frames:
        return o.skip
    reasons = sorted({r for _, _, r, _ in dropped}) + ([o.skip] if o.skip else [])
    if kept:
        return "; ".join(m for m in (f"{len(dropped)} frame(s) dropped" if dropped else "", o.skip) if m)
    if len(dropped) == 1 and len(reasons) == 1:
        return reasons[0]
    return f"all {len(dropped)} frames dropped: " + "; ".join(reasons[:3])


def _manifest_row(o: _Outcome, frame: int, meta: dict, cache_row: int, labels: _Labels,
                  salt: str) -> dict:
    csv_ids = labels.ids.get(o.rel, {})
    exam_key = exam_key_of(o.rel, meta, csv_ids.get("exam_id", ""))
    patient_key = ("pid:" + meta["patient_id"] if meta.get("patient_id")
                   else "pid:" + csv_ids["patient_id"] if csv_ids.get("patient_id") else exam_key)
    row = {"image_id": "i_" + hashlib.sha1(f"{o.rel}#{frame}".encode()).hexdigest()[:16],
           "path": o.rel, "frame": frame, "exam_id": _hash("e_", salt, exam_key),
           "patient_id": _hash("p_", salt, patient_key), "split": "unlabeled"}
    i = labels.find(o.rel, frame)
    for c in labels.classes:
        row[c] = labels.df[c].iloc[i] if i is not None else pd.NA
    row.update(vendor=meta.get("vendor", ""), study_date=meta.get("study_date", ""), sha1=o.sha1,
               cache_row=cache_row)
    return row


def _finish(root: Path, out: Path, cfg: IngestConfig, classes: list[str], rows: list[dict],
            report: list[dict], labels: _Labels, salt_source: str, n_files: int,
            n_dropped: int) -> IngestResult:
    rep = pd.DataFrame(report, columns=REPORT_COLUMNS)
    write_manifest(rep, out / REPORT)
    cols = BASE_COLUMNS + classes + ["vendor", "study_date", "sha1", "cache_row"]
    man = pd.DataFrame(rows, columns=cols)
    for c in classes:
        man[c] = man[c].astype("Int64")
    write_manifest(man, out / MANIFEST)
    file_rows = rep[rep["frame"] == ""]
    n_kept_files = int((file_rows["status"] == "kept").sum())
    n_labelled = int(man[classes].notna().all(axis=1).sum()) if len(man) else 0
    unmatched = 0 if labels.df is None else len(labels.df) - len(labels.used)
    conf = to_dict(cfg)
    conf.pop("salt")  # the salt is a secret: never written
    write_meta(out, {"classes": classes, "image_size": cfg.size, "n_images": len(man), "source": root.name,
                     "config": conf, "salt_source": salt_source, "n_files": n_files,
                     "n_files_kept": n_kept_files, "n_frames_dropped": n_dropped,
                     "n_labelled_frames": n_labelled, "n_label_rows_unmatched": unmatched})
    if len(man) == 0:
        raise UsclfError(f"no B-mode frames kept from {n_files} file(s); see {out / REPORT}")
    return IngestResult(out=out, images=out / IMAGES, manifest=out / MANIFEST, report=out / REPORT,
                        n_files=n_files, n_files_kept=n_kept_files, n_files_skipped=n_files - n_kept_files,
                        n_frames_kept=len(man), n_frames_dropped=n_dropped, n_labelled_frames=n_labelled,
                        n_label_rows_unmatched=unmatched)
