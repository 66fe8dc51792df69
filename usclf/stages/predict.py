"""`usclf predict`: a model file over exam folders -> one row per image/frame + a per-exam organ inventory.

Files are read and cleaned by ingest's own code (`ingest._process_file`), then go through the model's `eval`
transform: scores equal `usclf evaluate`'s on an ingested cache of the same files. Output by extension: .csv,
.json/.jsonl (JSON Lines: one object per line) or .parquet; the inventory goes to `<stem>_exams<ext>`.

Resuming: the unit of work is one folder's own files (an exam folder in the ROOT/<exam>/ layout).
`<out>.parts/progress.jsonl` gets a line per finished folder once its rows are on disk (fsync). CSV/JSON rows
are appended to the output and the line records its size: a rerun truncates the output there (dropping a
half-written folder) and skips recorded folders. Parquet rows go to one part per folder in `<out>.parts/`
(temp + rename), merged into `<out>` at the end; parts are kept so a later run over new exams predicts only
those. The inventory is summed from per-exam counts in the progress lines, never by re-reading the output.

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

from ..data.ingest import SALT_ENV, _hash, _Outcome, _process_file, exam_key_of
from ..data.transforms import AugmentConfig, build_transform
from ..errors import UsclfError
from ..eval.thresholds import apply_thresholds
from ..models.modelfile import load_model_file
from ..train.distributed import resolve_device
from .predict_output import _Output, output_paths
from .scoring import class_scores

_CHUNK = 4096          # rows of one folder written before the folder ends (bounds memory on huge folders)
_PREP_KEYS = ("size", "crop", "doppler_chroma", "doppler_fraction")


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


class Predictor:
    """A model file with what it needs to score raw frames: preprocessing, matching, thresholds."""

    def __init__(self, model_path: str | Path, device: str = "auto"):
        self.device = resolve_device(device)
        self.model, meta = load_model_file(model_path, self.device)
        self.classes = [str(c) for c in meta.get("classes") or []]
        if not self.classes:
            raise UsclfError(f"{model_path}: model file lists no classes")
        clash = [c for c in self.classes if c in ("exam_id", "path", "frame", "status", "reason")]
        if clash:
            raise UsclfError(f"{model_path}: class name '{clash[0]}' clashes with an output column")
        self.head = self.model.head.kind
        self.thresholds = np.asarray(meta.get("thresholds") or [], dtype=np.float64)
        if self.thresholds.shape != (len(self.classes),):
            raise UsclfError(f"{model_path} has no per-class thresholds: run `usclf evaluate --model "
                             f"{model_path}` and predict with the model.pt it writes")
        self.matching = None
        if self.head == "cluster":
            v = np.asarray(meta.get("matching") or [], dtype=np.float64)
            if v.shape != (self.model.head.num_clusters, len(self.classes)):
                raise UsclfError(f"{model_path}: clustering model without a cluster->class matching: run "
                                 "`usclf evaluate` first and predict with the model.pt it writes")
            self.matching = v
        self.soft = bool(meta.get("soft_matching", False))
        pre = meta.get("preprocess") or {}
        ing = pre.get("ingest") or {}
        if "size" not in ing:
            raise UsclfError(f"{model_path}: model file has no preprocessing settings (preprocess.ingest.size)")
        self.prep = {k: ing[k] for k in _PREP_KEYS if k in ing}
        aug = AugmentConfig(size=int(pre.get("input_size", ing["size"])),
                            **{k: float(pre[k]) for k in ("mean", "std") if k in pre})
        self.transform = build_transform("eval", aug)

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(N x C scores, N x C 0/1 labels) for prepared uint8 frames."""
        x = torch.from_numpy(np.stack([self.transform(im) for im in images]))[:, None].to(self.device)
        out = self.model(x)
        if isinstance(out, tuple):  # two-head model: predict with the multi-label head
            out = out[1]
        scores = class_scores(self.head, out.float().cpu().numpy(), self.matching, self.soft)
        return scores, apply_thresholds(scores, self.thresholds)


# ----------------------------------------------------------------------------------------------- walk
@dataclass
class Unit:
    name: str               # folder relative to the input root ('.' for files in the root itself)
    empty: bool = False     # a top-level folder with no file anywhere below (reported, not read)


def walk_units(root: Path, exclude: set[Path]) -> list[Unit]:
    """Folders holding files, in ingest's walk order (sorted), plus empty top-level exam folders."""
    units, tops = [], set()
    names = {p.name for p in exclude}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if n not in names or (d / n).resolve() not in exclude)
        if any(f not in names or (d / f).resolve() not in exclude for f in filenames):
            rel = d.relative_to(root).as_posix()
            units.append(Unit(rel))
            tops.add(rel.split("/")[0])
    holders = {q for e in exclude for q in e.parents}     # a folder holding only our output is no exam
    empty = [Unit(n.name + "/", True) for n in sorted(root.iterdir())
             if n.is_dir() and n.name not in tops and n.resolve() not in exclude | holders]
    return units + empty


def _unit_files(root: Path, unit: Unit, exclude: set[Path]) -> list[Path]:
    d, names = root / unit.name, {p.name for p in exclude}
    return [d / n for n in sorted(os.listdir(d))
            if not (d / n).is_dir() and (n not in names or (d / n).resolve() not in exclude)]


def _outcomes(items: Iterator[tuple[Unit, tuple | None]], workers: int) -> Iterator[tuple[Unit, _Outcome | None]]:
    """Decode files in order (None marks the end of a unit); a bounded window of worker processes."""
    if workers <= 0:
        for unit, task in items:
            yield unit, None if task is None else _process_file(task)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))  # no fork under torch
    window: deque = deque()
    try:
        for unit, task in items:
            window.append((unit, None if task is None else ex.submit(_process_file, task)))
            while len(window) > 4 * workers:   # decoded frames wait in memory only this far ahead
                u, fut = window.popleft()
                yield u, None if fut is None else fut.result()
        while window:
            u, fut = window.popleft()
            yield u, None if fut is None else fut.result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


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


def _file_rows(o: _Outcome, salt: str, blank: dict) -> Iterator[tuple[dict, np.ndarray | None]]:
    """One row per frame of a decoded file (predicted or skipped with its reason), or one file-level row."""
    meta0 = next((m for _, _, _, m in o.frames if m), {})
    for fi, img, reason, meta in o.frames:
        yield dict(blank, exam_id=_hash("e_", salt, exam_key_of(o.rel, meta or meta0)), path=o.rel, frame=fi,
                   status="predicted" if img is not None else "skipped", reason=reason), img
    if o.skip or not o.frames:
        yield dict(blank, exam_id=_hash("e_", salt, exam_key_of(o.rel, meta0)), path=o.rel, frame=None,
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


def predict(model_path: str | Path, input_dir: str | Path, out_file: str | Path, batch_size: int = 64,
            device: str = "auto", progress: bool = True, salt: str | None = None, workers: int = 0,
            on_unit: Callable[[str, int], None] | None = None) -> PredictResult:
    """Predict every image/frame under `input_dir` into `out_file` (+ `<stem>_exams<ext>`); resumable.

    `workers` > 0 decodes files in that many processes; `on_unit(folder, n_rows)` is called after each
    folder is safely recorded.
    """
    from tqdm import tqdm

    from ..data.ingest import norm_rel

    t0 = time.perf_counter()
    if batch_size < 1 or workers < 0:
        raise UsclfError(f"batch size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    out, exams_path, state, fmt = output_paths(out_file)
    root = Path(input_dir).resolve()
    if not root.is_dir():
        raise UsclfError(f"input folder not found: {root}")
    exclude = {out.resolve(), exams_path.resolve(), state.resolve()}
    units = walk_units(root, exclude)
    if all(u.empty for u in units):
        raise UsclfError(f"no files under {root}")
    pred = Predictor(model_path, device)
    classes = pred.classes
    columns = ["exam_id", "path", "frame", *[f"p_{c}" for c in classes], *classes, "status", "reason"]
    blank = dict.fromkeys(columns)
    random_salt = not (salt or os.environ.get(SALT_ENV))
    salt = salt or os.environ.get(SALT_ENV) or secrets.token_hex(16)
    run = {"model_sha1": _file_sha1(Path(model_path)), "input": str(root), "columns": columns}
    output = _Output(out, state, fmt, columns, classes, run)
    done = output.done()
    todo = [u for u in units if u.name not in done]
    if done and todo and random_salt:
        print(f"note: resuming {out.name} with a new random id salt: exam ids of this run are not comparable "
              f"with earlier ones (set {SALT_ENV} for stable ids)", file=sys.stderr)

    def items() -> Iterator[tuple[Unit, tuple | None]]:
        for u in todo:
            if not u.empty:
                for f in _unit_files(root, u, exclude):
                    yield u, (str(f), norm_rel(f.relative_to(root).as_posix()), pred.prep)
            yield u, None                      # end of this folder

    pending: deque[_Pending] = deque()
    buf: list[tuple[_Pending, dict, np.ndarray]] = []
    counts = {"rows": 0, "predicted": 0}
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

    def flush() -> None:
        while pending and not pending[0].waiting:
            p = pending[0]
            if p.rows and (p.ended or len(p.rows) >= _CHUNK):
                _tally(p, classes)
                output.write(p.rows)
                p.n_rows += len(p.rows)
                counts["rows"] += len(p.rows)
                p.rows = []
            if not p.ended:
                return
            output.commit(p.unit.name, p.n_rows, p.exams)
            pending.popleft()
            bar.update(1)
            if on_unit is not None:
                on_unit(p.unit.name, p.n_rows)

    try:
        for unit, o in _outcomes(items(), workers):
            if not pending or pending[-1].unit is not unit:
                pending.append(_Pending(unit))
            p = pending[-1]
            if o is None:
                p.ended = True
                if unit.empty:
                    p.rows.append(dict(blank, exam_id=_hash("e_", salt, exam_key_of(unit.name.rstrip("/"), {})),
                                       path=unit.name, status="skipped", reason="empty exam folder"))
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
        flush()
    finally:
        output.close()
        bar.close()
    output.finish(exams_path)
    return PredictResult(out=out, exams=exams_path, n_units=len(units), n_units_done=len(units) - len(todo),
                         n_rows=counts["rows"], n_predicted=counts["predicted"],
                         n_skipped=counts["rows"] - counts["predicted"], seconds=time.perf_counter() - t0)


def bench_predict(input_dir: str | Path, work_dir: str | Path, model_path: str | Path | None = None,
                  batch_size: int = 64, device: str = "auto", workers: int = 0, size: int = 128) -> dict:
    """Images/s of `predict` from files (read + clean + transform + model + write) into a fresh CSV.

    Without `model_path`, an untrained ResNet18 multi-label model at `size` px is written to `work_dir`
    (speed does not depend on the weights).
    """
    from ..data.manifest import DEFAULT_CLASSES
    from ..models.heads import build_classifier
    from ..models.modelfile import save_model_file

    work, c = Path(work_dir), list(DEFAULT_CLASSES)
    if model_path is None:
        model_path = save_model_file(work / "bench_model.pt", build_classifier("resnet18", num_classes=len(c)),
                                     classes=c, thresholds=[0.5] * len(c), preprocess={"ingest": {"size": size}})
    res = predict(model_path, input_dir, work / f"bench_{time.time_ns()}.csv", batch_size, device,
                  progress=False, salt="bench", workers=workers)
    return {"images": res.n_predicted, "rows": res.n_rows, "seconds": round(res.seconds, 3),
            "images_per_s": round(res.n_predicted / max(res.seconds, 1e-9), 1), "batch_size": batch_size,
            "workers": workers, "device": str(resolve_device(device))}
