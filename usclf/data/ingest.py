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
from typing import Iterator

import numpy as np
import pandas as pd

from ..config import to_dict
from ..errors import UsclfError
from ..paths import check_out_dir, is_no_space, mb, need_space
from .cache import IMAGES, MANIFEST, META, CacheWriter, write_meta
from .manifest import BASE_COLUMNS, DEFAULT_CLASSES, write_manifest
from .preprocess import RESIZE_MODES, prepare_frame
from .labels_csv import _LABEL_META, _Labels, norm_rel, read_labels_csv  # noqa: F401 (re-exported)
from .readers import Skip, iter_frames
from .splits import SplitConfig

REPORT = "ingest_report.csv"
REPORT_COLUMNS = ["path", "frame", "status", "frames_kept", "reason"]
SALT_ENV = "USCLF_PATIENT_SALT"


@dataclass
class IngestConfig:
    size: int = 128                 # cache image size (square); docs/design.md §3.1, CPU-friendly default
    doppler_chroma: float = 40.0    # pixel "coloured" when max-min over RGB > this (docs/design.md §3.1)
    doppler_fraction: float = 0.01  # frame dropped as colour Doppler when > this fraction is coloured
    crop: bool = True               # crop to scan region (docs/design.md §3.1: burned-in text and chrome removed)
    resize: str = "pad"             # pad (keep the aspect ratio of the anatomy) | stretch (the pre-0.2 resize)
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))  # paper's 6 organs + other
    salt: str | None = None         # id-hash salt; None -> env USCLF_PATIENT_SALT, else random
    workers: int = 0                # decoding processes (0 = in this process)
    keep_study_date: bool = False   # privacy: the DICOM StudyDate is a quasi-identifier; off unless needed
    keep_vendor: bool = True        # the Manufacturer tag (not about the patient): for per-vendor analysis


@dataclass
class IngestStageConfig:
    """`usclf ingest`: how files are read (`ingest`) and how exams are split by patient (`split`)."""
    ingest: IngestConfig = field(default_factory=IngestConfig)
    split: SplitConfig = field(default_factory=SplitConfig)


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


# ------------------------------------------------------------------------------------------ walk
def _walk(root: Path, exclude: Path, labels_csv: Path | None) -> tuple[list[Path], list[str]]:
    """Sorted files under root (skipping the output folder and the labels CSV) and top-level folders
    with no files."""
    files: list[Path] = []
    seen = {root.resolve()}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):  # symlinked exam folders count
        d = Path(dirpath)
        keep = []
        for n in sorted(dirnames):
            real = (d / n).resolve()
            if real != exclude and real not in seen:  # each real folder once: no symlink loops
                seen.add(real)
                keep.append(n)
        dirnames[:] = keep
        files.extend(d / f for f in sorted(filenames)
                     if labels_csv is None or (d / f).resolve() != labels_csv)
    top_with_files = {f.relative_to(root).parts[0] for f in files}
    empty = sorted(n.name + "/" for n in root.iterdir()
                   if n.is_dir() and n.resolve() != exclude and n.name not in top_with_files)
    return files, empty


@dataclass
class FileOutcome:
    """One file read and cleaned: its frames (or why it was skipped); shared with `usclf predict`."""
    rel: str
    sha1: str
    frames: list[tuple[int, np.ndarray | None, str, dict]]  # (frame, image | None, drop reason, meta)
    skip: str = ""                                          # file-level skip reason


def read_and_clean_file(task: tuple) -> FileOutcome:
    """Decode + clean one file (runs in a worker process when cfg.workers > 0).

    `task` = (path, rel, prep) or (path, rel, prep, with_sha1): predict passes False and gets sha1 ""
    (it never uses the hash, and hashing reads the whole file once more)."""
    abs_path, rel, prep = task[:3]
    try:
        h = hashlib.sha1()
        if len(task) < 4 or task[3]:
            with open(abs_path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        out = FileOutcome(rel, h.hexdigest() if len(task) < 4 or task[3] else "", [])
        for item in iter_frames(abs_path):
            if isinstance(item, Skip):
                if item.frame_index is None:
                    out.skip = item.reason
                else:
                    out.frames.append((item.frame_index, None, item.reason, {}))
                continue
            try:
                img, reason = prepare_frame(item.array, region=item.meta.get("region"), **prep)
            except Exception as e:  # one odd frame drops only that frame
                img, reason = None, f"error: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
            out.frames.append((item.frame_index, img, reason, item.meta))
        return out
    except Exception as e:  # never let one file end the ingest
        return FileOutcome(rel, "", [], f"error: {type(e).__name__}: {' '.join(str(e).split())[:200]}")


def _outcomes(tasks: list[tuple[str, str, dict]], workers: int) -> Iterator[FileOutcome]:
    if workers <= 0:
        yield from map(read_and_clean_file, tasks)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn: forking a process that may hold torch/OpenMP threads is unsafe
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        yield from ex.map(read_and_clean_file, tasks, chunksize=4)


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


def salted_id(prefix: str, salt: str, key: str) -> str:
    """prefix + 12 hex of sha256(salt, key): exam/patient ids that never show the original identifier."""
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
    if cfg.resize not in RESIZE_MODES:
        raise UsclfError(f"ingest.resize must be one of {', '.join(RESIZE_MODES)}, got {cfg.resize!r}")


def ingest(root: str | Path, out: str | Path, labels_csv: str | Path | None = None,
           cfg: IngestConfig | None = None, progress: bool = True) -> IngestResult:
    """Walk ROOT, write `images.npy`, `manifest.csv`, `dataset.json` and `ingest_report.csv` in OUT.

    A full disk ends the ingest with one line naming OUT and the space needed, and no half-written dataset:
    the partial cache is removed (and, if it filled up after the cache was complete, the new cache too)."""
    from tqdm import tqdm

    cfg = cfg or IngestConfig()
    _check_cfg(cfg)
    root, out = Path(root).resolve(), check_out_dir(Path(out).resolve())
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
                doppler_fraction=cfg.doppler_fraction, resize=cfg.resize)
    tasks = [(str(f), norm_rel(f.relative_to(root).as_posix()), prep) for f in files]

    out.mkdir(parents=True, exist_ok=True)
    frame_bytes = cfg.size * cfg.size
    need_space(out, len(files) * frame_bytes + (64 << 10), f"the cache of {len(files)} files (one frame each at least)")
    writer = CacheWriter(out, cfg.size)
    rows: list[dict] = []
    report: list[dict] = [dict(path=d, frame="", status="skipped", frames_kept=0, reason="empty exam folder")
                          for d in empty_dirs]
    n_dropped = done = 0
    closed = False
    try:
        for o in tqdm(_outcomes(tasks, cfg.workers), total=len(tasks), desc="ingest", unit="file",
                      disable=not progress):
            done += 1
            kept = [f for f in o.frames if f[1] is not None]
            dropped = [f for f in o.frames if f[1] is None]
            n_dropped += len(dropped)
            for fi, img, _, meta in kept:
                rows.append(_manifest_row(o, fi, meta, writer.add(img), labels, salt, cfg))
            for fi, _, _, _ in dropped:
                labels.find(o.rel, fi)
            report.append(dict(path=o.rel, frame="", status="kept" if kept else "skipped",
                               frames_kept=len(kept), reason=_relative(_file_reason(o, kept, dropped), root)))
            if len(o.frames) > 1:
                report += [dict(path=o.rel, frame=fi, status="skipped", frames_kept=0, reason=_relative(r, root))
                           for fi, _, r, _ in dropped]
        writer.close()
        closed = True
        return _finish(root, out, cfg, classes, rows, report, labels, salt_source, len(files), n_dropped)
    except BaseException as e:
        writer.abort()
        if closed:  # the new cache is in place but its manifest may not be: leave no half dataset behind
            for name in (META, MANIFEST, IMAGES):
                (out / name).unlink(missing_ok=True)
        if is_no_space(e):
            per_file = writer.n * frame_bytes / max(done, 1)
            raise UsclfError(f"no space left on device while writing the cache in {out}: the {len(files)} files "
                             f"need about {mb(per_file * len(files))} ({mb(writer.n * frame_bytes)} written "
                             "before the disk filled); the partial cache was removed") from None
        raise


def _relative(reason: str, root: Path) -> str:
    """Skip reasons quote exception messages, which may name the absolute input path: keep it relative."""
    return reason.replace(str(root) + os.sep, "").replace(str(root), ".")


def _file_reason(o: FileOutcome, kept: list, dropped: list) -> str:
    if not o.frames:
        return o.skip
    reasons = sorted({r for _, _, r, _ in dropped}) + ([o.skip] if o.skip else [])
    if kept:
        return "; ".join(m for m in (f"{len(dropped)} frame(s) dropped" if dropped else "", o.skip) if m)
    if len(dropped) == 1 and len(reasons) == 1:
        return reasons[0]
    return f"all {len(dropped)} frames dropped: " + "; ".join(reasons[:3])


def _manifest_row(o: FileOutcome, frame: int, meta: dict, cache_row: int, labels: _Labels,
                  salt: str, cfg: IngestConfig) -> dict:
    csv_ids = labels.ids.get(o.rel, {})
    exam_key = exam_key_of(o.rel, meta, csv_ids.get("exam_id", ""))
    patient_key = ("pid:" + meta["patient_id"] if meta.get("patient_id")
                   else "pid:" + csv_ids["patient_id"] if csv_ids.get("patient_id") else exam_key)
    row = {"image_id": "i_" + hashlib.sha1(f"{o.rel}#{frame}".encode()).hexdigest()[:16],
           "path": o.rel, "frame": frame, "exam_id": salted_id("e_", salt, exam_key),
           "patient_id": salted_id("p_", salt, patient_key), "split": "unlabeled",
           "_no_patient_id": patient_key == exam_key}
    i = labels.find(o.rel, frame)
    for c in labels.classes:
        row[c] = labels.df[c].iloc[i] if i is not None else pd.NA
    row.update(vendor=meta.get("vendor", "") if cfg.keep_vendor else "",
               study_date=meta.get("study_date", "") if cfg.keep_study_date else "",
               pixel_spacing_mm=meta.get("pixel_spacing_mm"), sha1=o.sha1, cache_row=cache_row)
    return row


def _finish(root: Path, out: Path, cfg: IngestConfig, classes: list[str], rows: list[dict],
            report: list[dict], labels: _Labels, salt_source: str, n_files: int,
            n_dropped: int) -> IngestResult:
    rep = pd.DataFrame(report, columns=REPORT_COLUMNS)
    write_manifest(rep, out / REPORT)
    cols = BASE_COLUMNS + classes + ["vendor", "study_date", "pixel_spacing_mm", "sha1", "cache_row"]
    no_pid = {r["exam_id"] for r in rows if r["_no_patient_id"]}
    man = pd.DataFrame(rows, columns=cols)
    for c in classes:
        man[c] = man[c].astype("Int64")
    for stale in sorted(out.glob("manifest_split_seed*.csv")):  # drawn from an earlier ingest's rows
        stale.unlink()
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
                     "n_labelled_frames": n_labelled, "n_label_rows_unmatched": unmatched,
                     "n_exams": int(man["exam_id"].nunique()) if len(man) else 0,
                     "n_exams_without_patient_id": len(no_pid)})
    if len(man) == 0:
        raise UsclfError(f"no B-mode frames kept from {n_files} file(s); see {out / REPORT}")
    return IngestResult(out=out, images=out / IMAGES, manifest=out / MANIFEST, report=out / REPORT,
                        n_files=n_files, n_files_kept=n_kept_files, n_files_skipped=n_files - n_kept_files,
                        n_frames_kept=len(man), n_frames_dropped=n_dropped, n_labelled_frames=n_labelled,
                        n_label_rows_unmatched=unmatched)
