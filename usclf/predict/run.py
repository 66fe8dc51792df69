"""`usclf predict`: a model file over exam folders -> one row per image/frame + a per-exam organ inventory.

Files are read and cleaned by ingest's own code (`ingest.read_and_clean_file`), then go through the model's `eval`
transform: scores equal `usclf evaluate`'s on an ingested cache of the same files. Output by extension: .csv,
.json/.jsonl (JSON Lines: one object per line) or .parquet; the inventory goes to `<stem>_exams<ext>`.

Resuming: the unit of work is one folder's own files not yet recorded (an exam folder in the ROOT/<exam>/
layout). `<out>.parts/progress.jsonl` gets a line per finished folder, listing its files, once its rows are on
disk (fsync). CSV/JSON rows are appended to the output and the line records its size: a rerun truncates the
output there (dropping a half-written folder) and predicts only files not recorded, so files added to a
growing export are picked up, in old folders too (their rows go after the old ones). Parquet rows go to one
part per folder in `<out>.parts/` (temp + rename), merged into `<out>` at the end; parts are kept for later
runs. The inventory is summed from per-exam counts in the progress lines, never by re-reading the output.
One run at a time per output (`<out>.parts/lock`); on a failure (a full disk too) the output is cut back to
the last recorded folder. Symlinked folders are followed (see `progress.walk_units`).

Privacy: exam ids are salted hashes as in ingest (salt argument, else env USCLF_PATIENT_SALT, else random per
run and never written: set one for ids stable across runs); paths are relative to the input folder.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..data.ingest import SALT_ENV, FileOutcome, exam_key_of, salted_id
from ..data.transforms import AugmentConfig, build_transform
from ..errors import UsclfError
from ..paths import is_no_space
from ..eval.thresholds import apply_thresholds
from ..models.modelfile import load_model_file
from ..train.distributed import resolve_device
from .decode import decoded_outcomes
from .output import _Output, output_paths
from .progress import Unit, check_out, no_space_message, output_lock, units_left, walk_units
from ..stages.scoring import head_kind

_CHUNK = 4096          # rows of one folder written before the folder ends (bounds memory on huge folders)
_SYNC_EVERY = 1.0      # seconds between fsyncs of finished folders (every folder when on_unit is given)
_PREP_KEYS = ("size", "crop", "doppler_chroma", "doppler_fraction", "resize")


@dataclass
class PredictResult:
    out: Path
    exams: Path
    n_units: int            # folders in the input
    n_units_done: int       # of which already complete before this run (skipped)
    n_rows: int             # rows written by this run
    n_predicted: int
    n_skipped: int
    seconds: float
    sr: object = None       # sr.SRResult when --dicom-sr was asked for


class Predictor:
    """A model file with what it needs to score raw frames: preprocessing, matching, thresholds."""

    def __init__(self, model_path: str | Path, device: str = "auto"):
        self.device = resolve_device(device)
        self.model, info = load_model_file(model_path, self.device)
        self.info = info
        self.classes = list(info.classes)
        if not self.classes:
            raise UsclfError(f"{model_path}: model file lists no classes")
        clash = [c for c in self.classes if c in ("exam_id", "path", "frame", "status", "reason")]
        if clash:
            raise UsclfError(f"{model_path}: class name '{clash[0]}' clashes with an output column")
        self.kind = head_kind(self.model.head.kind)
        self.thresholds = np.asarray(info.thresholds, dtype=np.float64)
        if self.thresholds.shape != (len(self.classes),):
            raise UsclfError(f"{model_path} has no per-class thresholds: run `usclf evaluate --model "
                             f"{model_path}` and predict with the model.pt it writes")
        self.matching = None
        if self.kind.matched:
            v = np.asarray(info.matching, dtype=np.float64)
            if v.shape != (self.model.head.num_clusters, len(self.classes)):
                raise UsclfError(f"{model_path}: clustering model without a cluster->class matching: run "
                                 "`usclf evaluate` first and predict with the model.pt it writes")
            self.matching = v
        self.soft = bool(info.soft_matching)
        ing = info.preprocess.ingest if info.preprocess is not None else {}
        if "size" not in ing:
            raise UsclfError(f"{model_path}: model file has no preprocessing settings (preprocess.ingest.size)")
        self.prep = {k: ing[k] for k in _PREP_KEYS if k in ing}
        self.columns = ["exam_id", "path", "frame", *[f"p_{c}" for c in self.classes], *self.classes, "status",
                        "reason"]
        self.transform = build_transform("eval", AugmentConfig(**info.preprocess.augment_kwargs(int(ing["size"]))))

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(N x C scores, N x C 0/1 labels) for prepared uint8 frames."""
        x = torch.from_numpy(np.stack([self.transform(im) for im in images]))[:, None].to(self.device)
        out = self.model(x)
        if isinstance(out, tuple):  # two-head model: predict with the multi-label head
            out = out[1]
        scores = self.kind.scores(out.float().cpu().numpy(), self.matching, self.soft)
        return scores, apply_thresholds(scores, self.thresholds)


def _file_sha1(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha1").hexdigest()


# ----------------------------------------------------------------------------------------------- predict
@dataclass
class _Pending:
    """Rows of one folder not yet on disk; `waiting` = its frames still queued for the model."""
    unit: Unit
    rows: list[dict] = field(default_factory=list)
    waiting: int = 0
    ended: bool = False
    n_rows: int = 0
    exams: dict[str, list[int]] = field(default_factory=dict)


def _file_rows(o: FileOutcome, salt: str, blank: dict) -> Iterator[tuple[dict, np.ndarray | None]]:
    """One row per frame of a decoded file (predicted or skipped with its reason), or one file-level row."""
    meta0 = next((m for _, _, _, m in o.frames if m), {})
    for fi, img, reason, meta in o.frames:
        yield dict(blank, exam_id=salted_id("e_", salt, exam_key_of(o.rel, meta or meta0)), path=o.rel, frame=fi,
                   status="predicted" if img is not None else "skipped", reason=reason), img
    if o.skip or not o.frames:
        yield dict(blank, exam_id=salted_id("e_", salt, exam_key_of(o.rel, meta0)), path=o.rel, frame=None,
                   status="skipped", reason=o.skip or "no frames decoded"), None


def _tally(p: _Pending, classes: list[str]) -> None:
    for r in p.rows:
        t = p.exams.setdefault(r["exam_id"], [0] * (2 + len(classes)))
        if r["status"] == "predicted":
            t[0] += 1
            for i, c in enumerate(classes):
                t[2 + i] += r[c]
        else:
            t[1] += 1


@dataclass
class PredictJob:
    """What predict checked before anything is written: the output's paths and format, the input's units."""
    out: Path
    exams: Path
    state: Path
    fmt: str
    root: Path
    units: list[Unit]


def plan_job(input_dir: str | Path, out_file: str | Path, batch_size: int, workers: int,
             dicom_sr: str | Path | None) -> PredictJob:
    """Check the arguments, --out and the input, and walk the input (nothing is written)."""
    if batch_size < 1 or workers < 0:
        raise UsclfError(f"batch size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    out, exams_path, state, fmt = output_paths(out_file)
    check_out(out, exams_path, state)
    root = Path(input_dir).resolve()
    if not root.is_dir():
        raise UsclfError(f"input folder not found: {root}")
    if dicom_sr is not None:
        from .sr_checks import check_sr_dir
        check_sr_dir(dicom_sr, root)   # before any row is written: a file, inside the input, read-only
    units = walk_units(root, {out.resolve(), exams_path.resolve(), state.resolve()})
    if all(u.note for u in units):
        raise UsclfError(f"no files under {root}")
    return PredictJob(out, exams_path, state, fmt, root, units)


def run_record(pred: Predictor, model_path: str | Path, root: Path) -> dict:
    """What a resumed run must share with the recorded one (`<out>.parts/run.json`)."""
    # the input folder only as a hash: folder names may name patients (privacy), equality is all resume needs
    return {"model_sha1": _file_sha1(Path(model_path)),
            "input": "sha1:" + hashlib.sha1(str(root).encode()).hexdigest(), "columns": pred.columns}


def write_failure(e: OSError, job: PredictJob, recorded: tuple[int, int, int], files_left: int,
                  n_columns: int) -> UsclfError:
    """The one-line error for an OSError while writing `job.out` (no space left: with the size still needed)."""
    if is_no_space(e):
        return UsclfError(no_space_message(job.out, recorded, files_left, n_columns, job.fmt == "parquet"))
    return UsclfError(f"cannot write {job.out}: {e.strerror or e}" + (f" ({e.filename})" if e.filename else ""))


def write_sr(job: PredictJob, dicom_sr: str | Path, pred: Predictor, run: dict):
    """One DICOM SR per study from the complete output (sr.py)."""
    from .sr import read_rows, write_exam_reports
    try:
        return write_exam_reports(read_rows(job.out), job.root, dicom_sr, pred.classes, pred.thresholds,
                                  {"method": pred.info.method, "model_sha1": run["model_sha1"]})
    except OSError as e:
        raise UsclfError(f"predictions are in {job.out}, but the DICOM SRs could not be written to {dicom_sr}: "
                         f"{e.strerror or e}") from None


def predict(model_path: str | Path, input_dir: str | Path, out_file: str | Path, batch_size: int = 64,
            device: str = "auto", progress: bool = True, salt: str | None = None, workers: int = 0,
            on_unit: Callable[[str, int], None] | None = None, dicom_sr: str | Path | None = None) -> PredictResult:
    """Predict every image/frame under `input_dir` into `out_file` (+ `<stem>_exams<ext>`); resumable.

    `workers` > 0 decodes files in that many processes; `on_unit(folder, n_rows)` is called after each
    folder is safely recorded; `dicom_sr`: a folder for one DICOM SR per study of the DICOM inputs, written
    from the complete output (sr.py). One process; under torchrun see `shard.predict_ranks`.
    """
    t0 = time.perf_counter()
    job = plan_job(input_dir, out_file, batch_size, workers, dicom_sr)
    units = job.units
    pred = Predictor(model_path, device)
    columns = pred.columns
    run = run_record(pred, model_path, job.root)
    counts = {"rows": 0, "predicted": 0, "files": 0, "todo_files": sum(len(u.files) or 1 for u in units),
              "todo_units": len(units)}
    output = None
    try:
        with output_lock(job.state, job.out):
            output = _Output(job.out, job.state, job.fmt, columns, pred.classes, run)
            try:
                _predict_into(output, pred, job.root, units, columns, salt, batch_size, workers, progress,
                              on_unit, counts)
                output.finish(job.exams)
            except BaseException:
                output.abort()
                raise
    except OSError as e:
        raise write_failure(e, job, output.recorded() if output else (0, 0, 0),
                            counts["todo_files"] - counts["files"], len(columns)) from None
    sr = write_sr(job, dicom_sr, pred, run) if dicom_sr is not None else None
    return PredictResult(out=job.out, exams=job.exams, n_units=len(units),
                         n_units_done=len(units) - counts["todo_units"], n_rows=counts["rows"],
                         n_predicted=counts["predicted"], n_skipped=counts["rows"] - counts["predicted"],
                         seconds=time.perf_counter() - t0, sr=sr)


def _predict_into(output: _Output, pred: Predictor, root: Path, units: list[Unit], columns: list[str],
                  salt: str | None, batch_size: int, workers: int, progress: bool,
                  on_unit: Callable[[str, int], None] | None, counts: dict) -> None:
    """The files of `units` not yet recorded in `output` -> rows, folder by folder (fills `counts`)."""
    from tqdm import tqdm

    from ..data.ingest import norm_rel

    classes, blank = pred.classes, dict.fromkeys(columns)
    todo = units_left(units, *output.done())
    counts.update(todo_units=len(todo), todo_files=sum(len(u.files) or 1 for u in todo))
    random_salt = not (salt or os.environ.get(SALT_ENV))
    salt = salt or os.environ.get(SALT_ENV) or secrets.token_hex(16)
    if output.entries and todo and random_salt:
        print(f"note: resuming {output.out.name} with a new random id salt: exam ids of this run are not "
              f"comparable with earlier ones (set {SALT_ENV} for stable ids)", file=sys.stderr)

    def items() -> Iterator[tuple[Unit, tuple | None]]:
        for u in todo:
            for f in u.files:
                yield u, (str(root / u.name / f), norm_rel(u.key(f)), pred.prep, False)   # no file sha1
            yield u, None                      # end of this folder

    pending: deque[_Pending] = deque()
    buf: list[tuple[_Pending, dict, np.ndarray]] = []
    bar = tqdm(total=len(units), initial=len(units) - len(todo), desc="predict", unit="exam",
               disable=not progress)

    def run_batch() -> None:
        scores, labels = pred([img for _, _, img in buf])
        for (p, row, _), s, y in zip(buf, scores, labels):
            row.update({f"p_{c}": float(v) for c, v in zip(classes, s)})
            row.update({c: int(v) for c, v in zip(classes, y)})
            p.waiting -= 1
        counts["predicted"] += len(buf)
        buf.clear()

    staged: list[_Pending] = []
    last_sync = [float("-inf")]           # the first folder is recorded at once, later ones in groups

    def record(force: bool = False) -> None:
        now = time.monotonic()
        if not staged or not (force or on_unit is not None or now - last_sync[0] >= _SYNC_EVERY):
            return
        output.sync()
        last_sync[0] = now
        for p in staged:
            counts["files"] += len(p.unit.files) or 1
            bar.update(1)
            if on_unit is not None:
                on_unit(p.unit.name, p.n_rows)
        staged.clear()

    def flush(force: bool = False) -> None:
        while pending and not pending[0].waiting:
            p = pending[0]
            if p.rows and (p.ended or len(p.rows) >= _CHUNK):
                _tally(p, classes)
                output.write(p.rows)
                p.n_rows += len(p.rows)
                counts["rows"] += len(p.rows)
                p.rows = []
            if not p.ended:
                break
            u = p.unit
            output.commit(u.name, [norm_rel(u.key(f)) for f in u.files] or [u.name], p.n_rows, p.exams, sync=False)
            staged.append(pending.popleft())
        record(force)

    try:
        for unit, o in decoded_outcomes(items(), workers):
            if not pending or pending[-1].unit is not unit:
                pending.append(_Pending(unit))
            p = pending[-1]
            if o is None:
                p.ended = True
                if unit.note:
                    p.rows.append(dict(blank, exam_id=salted_id("e_", salt, exam_key_of(unit.name.rstrip("/"), {})),
                                       path=unit.name, status="skipped", reason=unit.note))
            else:
                for row, img in _file_rows(o, salt, blank):
                    p.rows.append(row)
                    if img is not None:
                        buf.append((p, row, img))
                        p.waiting += 1
            if len(buf) >= batch_size:
                run_batch()
            flush()
        if buf:
            run_batch()
        flush(force=True)
    finally:
        bar.close()
    output.close()


def bench_predict(input_dir: str | Path, work_dir: str | Path, model_path: str | Path | None = None,
                  batch_size: int = 64, device: str = "auto", workers: int = 0, size: int = 128) -> dict:
    """Images/s of `predict` from files (read + clean + transform + model + write) into a fresh CSV.

    Without `model_path`, an untrained ResNet18 multi-label model at `size` px is written to `work_dir`
    (speed does not depend on the weights).
    """
    from ..data.manifest import DEFAULT_CLASSES
    from ..models.heads import build_classifier
    from ..models.modelfile import ModelInfo, Preprocess, save_model_file

    work, c = Path(work_dir), list(DEFAULT_CLASSES)
    if model_path is None:
        model_path = save_model_file(work / "bench_model.pt", build_classifier("resnet18", num_classes=len(c)),
                                     ModelInfo(c, preprocess=Preprocess({"size": size}), thresholds=[0.5] * len(c)))
    res = predict(model_path, input_dir, work / f"bench_{time.time_ns()}.csv", batch_size, device,
                  progress=False, salt="bench", workers=workers)
    return {"images": res.n_predicted, "rows": res.n_rows, "seconds": round(res.seconds, 3),
            "images_per_s": round(res.n_predicted / max(res.seconds, 1e-9), 1), "batch_size": batch_size,
            "workers": workers, "device": str(resolve_device(device))}
