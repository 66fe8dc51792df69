"""`usclf predict` under torchrun: exam folders shared out over the ranks, one part per rank, merged by rank 0.

Launch: `torchrun --nproc-per-node N -m usclf.cli predict ...` (gloo on the CPU, nccl on GPUs, one GPU per
rank). Every rank must see --input and --out at the same paths: one machine, or a shared file system.

The ranks go through the phases together: a phase that fails on any rank fails on every rank (with that
rank's one-line error), so no rank waits on a peer that gave up.
1. Rank 0 checks the arguments, walks the input, takes the output's lock (`<out>.parts/lock`: one job per
   --out; the other ranks take none, they write only inside `<out>.parts/`, which rank 0's lock covers) and
   opens the output as a 1-process run does (same run? cut back to the last recorded folder). A second job
   on the same --out stops here, on every rank, with nothing written.
2. Every rank opens its part `<out>.parts/ranks/r<rank><ext>`: an output of the same format with its own
   progress log, resumed like a 1-process output. Rank 0 also opens parts of ranks a larger earlier job had.
3. The folders neither in the output nor recorded in a part are shared out in walk order, each to the rank
   with the fewest files so far (deterministic, disjoint, every file once), and predicted into the parts.
4. Once every rank has finished, rank 0 copies the parts' folders into the output in walk order (the rows and
   order of a 1-process run), records them with one fsync and one progress-log write, writes the inventory
   (and the SRs) and deletes the parts.
Crashes: a rank killed in 3 leaves its part with whole recorded folders only, and the output as it was. A
crash in 4 leaves rows past the output's last recorded folder, which the next run cuts off (as after a
1-process kill); the parts, deleted only once the output records their folders, still hold them. Folders of
a part already in the output are skipped, so a rerun with any number of ranks (1 included) merges each file
once and predicts only what no part holds.
"""
from __future__ import annotations

import csv
import io
import os
import secrets
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, TypeVar

import torch

from ..data.ingest import SALT_ENV, norm_rel
from ..errors import UsclfError
from ..train.distributed import (DistInfo, broadcast_object, cleanup_distributed, gather_objects,
                                 init_distributed)
from .output import _Output, output_paths
from .progress import Unit, output_lock, units_left
from .run import (PredictJob, PredictResult, Predictor, _predict_into, plan_job, predict, run_record,
                  write_failure, write_sr)

RANKS = "ranks"           # <out>.parts/ranks/: the per-rank parts
WAIT_S = 24 * 3600.0      # how long a rank that finished its share waits for the slowest one
T = TypeVar("T")


def predict_any(model_path: str | Path, input_dir: str | Path, out_file: str | Path, batch_size: int = 64,
                device: str = "auto", progress: bool = True, salt: str | None = None, workers: int = 0,
                on_unit: Callable[[str, int], None] | None = None,
                dicom_sr: str | Path | None = None) -> PredictResult:
    """`run.predict` in one process; `predict_ranks` under torchrun (WORLD_SIZE > 1) or when an earlier
    multi-process run left parts to merge."""
    args = (model_path, input_dir, out_file, batch_size, device, progress, salt, workers, on_unit, dicom_sr)
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1") or _left_parts(out_file):
        return predict_ranks(*args)
    return predict(*args)


def predict_ranks(model_path: str | Path, input_dir: str | Path, out_file: str | Path, batch_size: int = 64,
                  device: str = "auto", progress: bool = True, salt: str | None = None, workers: int = 0,
                  on_unit: Callable[[str, int], None] | None = None,
                  dicom_sr: str | Path | None = None) -> PredictResult:
    """`predict` over the ranks of the torchrun job (joined here unless already joined), by the protocol of the
    module doc; every rank gets the same result (rows and counts of the merged output). Runs as 1 rank too."""
    owned = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = init_distributed(timeout_s=WAIT_S)
    try:
        return _predict_ranks(info, model_path, input_dir, out_file, batch_size, device, progress, salt, workers,
                              on_unit, dicom_sr)
    finally:
        if owned:
            cleanup_distributed()


def shard_units(units: list[Unit], world: int) -> list[list[Unit]]:
    """Folders in walk order, each to the rank with the fewest files so far (ties: the lowest rank)."""
    shards: list[list[Unit]] = [[] for _ in range(world)]
    load = [0] * world
    for u in units:
        r = min(range(world), key=lambda i: (load[i], i))
        shards[r].append(u)
        load[r] += len(u.files) or 1
    return shards


def rank_device(device: str, info: DistInfo) -> str:
    """'auto' / 'cuda' -> this rank's GPU (cuda:LOCAL_RANK) under torchrun; anything else as given."""
    if info.distributed and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{info.local_rank}"
    return device


# ----------------------------------------------------------------------------------------------- protocol
def _predict_ranks(info: DistInfo, model_path, input_dir, out_file, batch_size, device, progress, salt, workers,
                   on_unit, dicom_sr) -> PredictResult:
    t0 = time.perf_counter()
    rank, world = info.rank, info.world_size
    with ExitStack() as stack:
        job: PredictJob = _from_main(info, lambda: plan_job(input_dir, out_file, batch_size, workers, dicom_sr))
        pred = _together(info, lambda: Predictor(model_path, rank_device(device, info)))
        columns = pred.columns

        def open_output() -> tuple[_Output, dict]:
            run = run_record(pred, model_path, job.root)
            stack.enter_context(output_lock(job.state, job.out))
            return _Output(job.out, job.state, job.fmt, columns, pred.classes, run), run

        output, run = _together(info, open_output if info.is_main else lambda: (None, None))
        run, salting = _from_main(info, lambda: (run, _salt(salt)))
        parts: dict[int, _Output] = {}

        def open_parts() -> None:
            extra = [r for r in _part_ranks(job.state / RANKS) if r >= world] if info.is_main else []
            for r in [rank, *extra]:
                out, state = _part_paths(job, r)
                parts[r] = _Output(out, state, job.fmt, columns, pred.classes, run)

        try:
            _together(info, open_parts)
            recorded = _merged_dicts(gather_objects({r: p.entries for r, p in parts.items()}))
            todo, shards = _from_main(info, lambda: _share(output, job, recorded, world, salting))
            counts = {"rows": 0, "predicted": 0, "files": 0, "todo_files": 0, "todo_units": 0}
            part = parts[rank]

            def work() -> None:
                try:
                    _predict_into(part, pred, job.root, shards[rank], columns, salting[0], batch_size, workers,
                                  progress and info.is_main, on_unit, counts)
                except OSError as e:
                    part.abort()
                    raise write_failure(e, job, part.recorded(), counts["todo_files"] - counts["files"],
                                        len(columns)) from None
                except BaseException:
                    part.abort()
                    raise

            _together(info, work)
            recorded = _merged_dicts(gather_objects({r: p.entries for r, p in parts.items()}))
            merged = _from_main(info, lambda: _merge_all(output, job, todo, recorded, columns, pred, run, dicom_sr))
        finally:
            for p in parts.values():
                p.close()
    rows, predicted, sr = merged
    return PredictResult(out=job.out, exams=job.exams, n_units=len(job.units), n_units_done=len(job.units) - len(todo),
                         n_rows=rows, n_predicted=predicted, n_skipped=rows - predicted,
                         seconds=time.perf_counter() - t0, sr=sr)


def _salt(salt: str | None) -> tuple[str, bool]:
    """(the exam-id salt every rank uses, whether it is random: rank 0's, sent to the others, never written)."""
    given = salt or os.environ.get(SALT_ENV)
    return (given, False) if given else (secrets.token_hex(16), True)


def _share(output: _Output, job: PredictJob, recorded: dict[int, list[dict]], world: int,
           salting: tuple[str, bool]) -> tuple[list[Unit], list[list[Unit]]]:
    """(folders not in the output, in walk order; per rank the folders of them no part holds yet)."""
    todo = units_left(job.units, *output.done())
    if output.entries and todo and salting[1]:
        print(f"note: resuming {job.out.name} with a new random id salt: exam ids of this run are not "
              f"comparable with earlier ones (set {SALT_ENV} for stable ids)", file=sys.stderr)
    in_parts = {f for entries in recorded.values() for e in entries for f in e["files"]}
    return todo, shard_units(units_left(todo, in_parts), world)


def _merge_all(output: _Output, job: PredictJob, todo: list[Unit], recorded: dict[int, list[dict]],
               columns: list[str], pred: Predictor, run: dict, dicom_sr) -> tuple[int, int, object]:
    """Phase 4 on rank 0: (rows, predicted rows) merged into the output, and the SRs when asked for."""
    try:
        rows, predicted = _merge(output, job, todo, recorded, columns)
        output.finish(job.exams)
    except OSError as e:
        output.abort()
        raise write_failure(e, job, output.recorded(), 0, len(columns)) from None
    except BaseException:
        output.abort()
        raise
    shutil.rmtree(job.state / RANKS, ignore_errors=True)
    return rows, predicted, (write_sr(job, dicom_sr, pred, run) if dicom_sr is not None else None)


def _merge(output: _Output, job: PredictJob, todo: list[Unit], recorded: dict[int, list[dict]],
           columns: list[str]) -> tuple[int, int]:
    """Copy the parts' folders of `todo` into `output` in walk order and record them (one sync)."""
    header = _csv_header_size(columns) if job.fmt == "csv" else 0
    where: dict[str, list[tuple[int, int, dict]]] = {}      # folder -> [(rank, first byte, entry)]
    for r in sorted(recorded):
        end = header
        for e in recorded[r]:
            where.setdefault(e["unit"], []).append((r, end, e))
            end = e.get("end", end)
    done, taken, plan = output.done()[0], set(), []
    for u in todo:
        for r, start, e in where.get(u.name, ()):
            files = set(e["files"])
            if files & done or files & taken:     # in the output already (an earlier merge) / taken: skip
                continue
            taken |= files
            plan.append((r, start, e))
    want = {norm_rel(u.key(f)) for u in todo for f in u.files} | {u.name for u in todo if u.note}
    if want - taken:
        raise UsclfError(f"{len(want - taken)} files for {job.out.name} are in no rank's part (e.g. "
                         f"{sorted(want - taken)[0]}); nothing was merged: rerun to predict them")
    for r, start, e in plan:
        out, state = _part_paths(job, r)
        output.copy_folder(e, out, start, state)
    output.sync()
    rows = sum(e["rows"] for _, _, e in plan)
    return rows, sum(t[0] for _, _, e in plan for t in e["exams"].values())


def _csv_header_size(columns: list[str]) -> int:
    buf = io.StringIO()
    csv.DictWriter(buf, columns, lineterminator="\n").writeheader()
    return len(buf.getvalue().encode())


def _part_paths(job: PredictJob, rank: int) -> tuple[Path, Path]:
    out = job.state / RANKS / f"r{rank}{job.out.suffix}"
    return out, out.with_name(out.name + ".parts")


def _part_ranks(ranks: Path) -> list[int]:
    """Ranks with a part under `ranks` (an earlier run's, possibly of more ranks)."""
    found = []
    for p in ranks.glob("r*.parts") if ranks.is_dir() else ():
        head = p.name.split(".", 1)[0][1:]
        if p.is_dir() and head.isdigit():
            found.append(int(head))
    return sorted(found)


def _left_parts(out_file: str | Path) -> bool:
    try:
        state = output_paths(out_file)[2]
    except UsclfError:
        return False              # predict says what is wrong with --out
    return bool(_part_ranks(state / RANKS))


def _merged_dicts(ds: list[dict[int, list[dict]]]) -> dict[int, list[dict]]:
    return {r: v for d in ds for r, v in d.items()}


# ----------------------------------------------------------------------------------------------- collectives
def _attempt(fn: Callable[[], T]) -> tuple[T | None, BaseException | None]:
    try:
        return fn(), None
    except Exception as e:           # an interrupt ends the process: torchrun then stops the other ranks
        return None, e


def _message(e: BaseException, rank: int) -> str:
    return str(e) if isinstance(e, UsclfError) else f"rank {rank}: {type(e).__name__}: {e}"


def _together(info: DistInfo, fn: Callable[[], T]) -> T:
    """fn() on every rank; if it failed on any rank, every rank raises (its own error, else the first one)."""
    value, err = _attempt(fn)
    errors = gather_objects(None if err is None else _message(err, info.rank))
    if err is not None:
        raise err
    first = next((m for m in errors if m), None)
    if first:
        raise UsclfError(first)
    return value


def _from_main(info: DistInfo, fn: Callable[[], T]) -> T:
    """fn() on rank 0 and its (picklable) value on every rank; its error raised on every rank."""
    value, err = _attempt(fn) if info.is_main else (None, None)
    value, message = broadcast_object((value, None if err is None else _message(err, 0)))
    if err is not None:
        raise err
    if message:
        raise UsclfError(message)
    return value
