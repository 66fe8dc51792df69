"""`usclf predict` failure modes on real files and real processes: two runs on one output (lock), a growing
export (resume by file), symlinked exam folders, unusable --out paths, a full disk (real tmpfs when root)."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_disk
from test_predict import SALT, _read, _same, _world
from usclf.errors import UsclfError
from usclf.predict import output as predict_output
from usclf.predict.run import predict
from usclf.predict.progress import output_lock

ONE_LINE = "usclf predict: error: "


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _world(tmp_path_factory)


def _cli(world, inp: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, USCLF_PATIENT_SALT=SALT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "usclf.cli", "predict", "--model", str(world.tmp / "ml.pt"),
                           "--input", str(inp), "--out", str(out), "--device", "cpu", "--batch-size", "16",
                           "--quiet"], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def _one_line_error(r: subprocess.CompletedProcess, *parts: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ONE_LINE) and "Traceback" not in r.stderr, r.stderr
    for p in parts:
        assert p in lines[0], lines[0]
    return lines[0]


def _snapshot(d: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes | None]:
    return {p.relative_to(d).as_posix(): None if p.is_dir() or not p.is_file() else p.read_bytes()
            for p in sorted(d.rglob("*")) if p.name not in skip}


def _copy_raw(world, tmp: Path) -> Path:
    shutil.copytree(world.raw, tmp / "raw", symlinks=True)
    return tmp / "raw"


def _by_key(df: pd.DataFrame) -> pd.DataFrame:
    f = pd.to_numeric(df["frame"], errors="coerce").fillna(-1)
    return df.assign(_f=f).sort_values(["path", "_f"], kind="stable").drop(columns="_f")


def _predicted_file(df: pd.DataFrame, folder: str) -> str:
    return sorted(df.loc[(df.status == "predicted") & df.path.str.startswith(folder + "/"), "path"])[0]


# ----------------------------------------------------------------------------------------------- 1. lock
def test_second_run_on_a_locked_output_exits_2_and_touches_nothing(world, tmp_path):
    raw = _copy_raw(world, tmp_path)
    out, state = tmp_path / "o" / "p.csv", tmp_path / "o" / "p.csv.parts"
    predict(world.tmp / "ml.pt", raw, out, batch_size=16, progress=False, salt=SALT)
    new = raw / "exam_00001" / "IMG_0100.jpg"                    # work for the second run, if it ran
    shutil.copy(raw / _predicted_file(_read(out), "exam_00001"), new)
    before = _snapshot(tmp_path / "o", skip=("lock",))
    with output_lock(state, out):
        r = _cli(world, raw, out, tmp_path)
        assert _snapshot(tmp_path / "o", skip=("lock",)) == before
    assert _one_line_error(r) == (f"{ONE_LINE}{out} is being written by another usclf predict (pid {os.getpid()}); "
                                  "wait for it or choose another --out")
    r = _cli(world, raw, out, tmp_path)                           # the holder is gone: the run goes ahead
    assert r.returncode == 0, r.stderr
    df = _read(out)
    assert (df.path == "exam_00001/IMG_0100.jpg").sum() == 1 and not df.duplicated(["path", "frame"]).any()


_HOLDER = """import sys, time
from pathlib import Path
from usclf.predict.progress import output_lock
out = Path(sys.argv[1])
with output_lock(out.with_name(out.name + ".parts"), out):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_killed_holder_does_not_block_the_next_run(world, tmp_path):
    out, state = tmp_path / "o" / "p.csv", tmp_path / "o" / "p.csv.parts"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsclfError, match=rf"being written by another usclf predict \(pid {holder.pid}\)"):
            with output_lock(state, out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    assert holder.returncode == -signal.SIGKILL
    r = _cli(world, world.raw, out, tmp_path)
    assert r.returncode == 0, r.stderr
    _same(_read(out), _read(world.ref.out))
    _same(_read(out.with_name("p_exams.csv")), _read(world.ref.exams))


# ----------------------------------------------------------------------------------------------- 2. growing export
class _Stop(Exception):
    pass


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_rerun_on_a_growing_export_predicts_exactly_the_new_files(world, tmp_path, ext):
    raw = _copy_raw(world, tmp_path)
    out, model = tmp_path / "o" / f"p{ext}", world.tmp / "ml.pt"
    first = predict(model, raw, out, batch_size=16, progress=False, salt=SALT)
    df0, inv0 = _read(out), _read(first.exams).set_index("exam_id")
    old = _predicted_file(df0, "exam_00001")
    eid = df0.loc[df0.path == old, "exam_id"].iloc[0]
    shutil.copy(raw / old, raw / "exam_00001" / "IMG_0100.jpg")      # a new file in a finished exam
    shutil.copy(raw / "zz_mixed" / "sub" / "deep.png", raw / "zz_mixed" / "sub" / "late.png")   # ... sub-folder
    shutil.copytree(raw / "exam_00003", raw / "exam_00009")         # a new exam
    clean = predict(model, raw, tmp_path / "clean" / f"p{ext}", batch_size=16, progress=False, salt=SALT)

    # a rerun interrupted after its first folder (plus a torn row, as a kill leaves it) ...
    def stop(unit, n):
        raise _Stop

    with pytest.raises(_Stop):
        predict(model, raw, out, batch_size=4, progress=False, salt=SALT, on_unit=stop)
    if ext != ".parquet":
        with open(out, "a") as fh:
            fh.write('{"exam_id": "e_0123456789ab", "path": "exam_0' if ext == ".jsonl" else "e_0123,exam_0")
    # ... then resumed: every file's rows exactly once, same rows and inventory as one clean run
    res = predict(model, raw, out, batch_size=16, progress=False, salt=SALT)
    assert res.n_units_done == res.n_units - 2 and res.n_units == first.n_units + 1
    df = _read(out)
    assert not df.duplicated(["path", "frame"]).any() and len(df) == len(_read(clean.out))
    assert (df.path == "exam_00001/IMG_0100.jpg").sum() == 1 and (df.path == "zz_mixed/sub/late.png").sum() == 1
    assert df.path.str.startswith("exam_00009/").sum() == (df0.path.str.startswith("exam_00003/")).sum()
    _same(df.iloc[: len(df0)], df0)                                # old rows untouched, new ones after them
    _same(_by_key(df), _by_key(_read(clean.out)))
    inv = _read(res.exams).set_index("exam_id")
    _same(inv.sort_index().reset_index(), _read(clean.exams).set_index("exam_id").sort_index().reset_index())
    assert inv.loc[eid, "n_frames"] == inv0.loc[eid, "n_frames"] + 1 and len(inv) == len(inv0) + 1
    again = predict(model, raw, out, progress=False, salt=SALT)
    assert again.n_rows == 0 and len(_read(out)) == len(df)


def test_progress_lines_of_older_versions_count_their_folders_as_done(world, tmp_path):
    out = tmp_path / "o" / "p.jsonl"
    predict(world.tmp / "ml.pt", world.raw, out, batch_size=16, progress=False, salt=SALT)
    log = out.with_name("p.jsonl.parts") / "progress.jsonl"
    entries = [json.loads(x) for x in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "files"}) + "\n" for e in entries))
    again = predict(world.tmp / "ml.pt", world.raw, out, progress=False, salt=SALT)
    assert again.n_rows == 0 and again.n_units_done == again.n_units
    _same(_read(out), _read(world.ref.out))


# ----------------------------------------------------------------------------------------------- 3. symlinks
@pytest.mark.timeout(300)
def test_symlinked_exam_folders_are_followed_once_without_loops(world, tmp_path):
    raw, away = tmp_path / "raw", tmp_path / "elsewhere"
    shutil.copytree(world.raw / "exam_00001", raw / "exam_00001")
    shutil.copytree(world.raw / "exam_00003", away / "exam_x")
    shutil.copytree(world.raw / "zz_mixed" / "sub", away / "more")
    os.symlink(away / "exam_x", raw / "exam_link")                  # an exam folder that is a symlink
    os.symlink(away / "more", raw / "exam_00001" / "more")          # a symlinked sub-folder
    os.symlink("..", raw / "exam_00001" / "loop")                   # -> the input root
    os.symlink(".", raw / "exam_00001" / "self")                    # -> its own folder
    os.symlink(tmp_path, raw / "exam_00001" / "up")                 # -> above the input
    os.symlink(away / "exam_x", away / "exam_x" / "back")           # a loop inside the linked tree
    os.symlink(away / "exam_x", raw / "zz_again")                   # the same folder a second time
    res = predict(world.tmp / "ml.pt", raw, tmp_path / "o" / "p.csv", batch_size=16, progress=False, salt=SALT)
    df, ref = _read(res.out), _read(world.ref.out)
    assert not df.duplicated(["path", "frame"]).any() and "empty exam folder" not in set(df.reason.dropna())
    # rows under the link's name, with the scores of the same files read directly
    linked = _by_key(df[df.path.str.startswith("exam_link/") & ~df.path.str.endswith("/")])
    direct = _by_key(ref[ref.path.str.startswith("exam_00003/")])
    assert list(linked.path) == [p.replace("exam_00003/", "exam_link/") for p in direct.path]
    _same(linked.drop(columns=["exam_id", "path"]), direct.drop(columns=["exam_id", "path"]))
    ids = ["exam_id", "path"]
    _same(df[df.path == "exam_00001/more/deep.png"].drop(columns=ids),
          ref[ref.path == "zz_mixed/sub/deep.png"].drop(columns=ids))
    notes = df[df.path.str.endswith("/")].set_index("path")["reason"].to_dict()
    loop = "symlinked folder not followed: it points to the input folder or above it (a loop)"
    assert notes == {"exam_00001/loop/": loop, "exam_00001/up/": loop,
                     "exam_00001/self/": "symlinked folder not followed: same folder as exam_00001/",
                     "exam_link/back/": "symlinked folder not followed: same folder as exam_link/",
                     "zz_again/": "symlinked folder not followed: same folder as exam_link/"}
    again = predict(world.tmp / "ml.pt", raw, res.out, progress=False, salt=SALT)
    assert again.n_rows == 0


# ----------------------------------------------------------------------------------------------- 4. bad --out
def _bad_out(kind: str, d: Path) -> tuple[Path, str]:
    if kind == "folder":
        (d / "results").mkdir()
        return d / "results", "is a folder: give a file name"
    if kind == "folder.csv":
        (d / "p.csv").mkdir()
        return d / "p.csv", "is a folder: give a file name"
    if kind == "foreign csv":
        (d / "theirs.csv").write_text("a,b\n1,2\n")
        return d / "theirs.csv", "exists but has no resume state"
    if kind == "other kind":
        (d / "notes.txt").write_text("not ours\n")
        return d / "notes.txt", "unknown format"
    if kind == "fifo":
        os.mkfifo(d / "pipe.csv")
        return d / "pipe.csv", "exists and is not a regular file"
    if kind == "below a file":
        (d / "somefile.txt").write_text("a file\n")
        return d / "somefile.txt" / "pred.csv", f"{d / 'somefile.txt'} is not a folder"
    (d / "p_exams.csv").write_text("exam,organ\nmine,liver\n")      # the inventory would overwrite a file
    return d / "p.csv", "p_exams.csv is in the way"


@pytest.mark.parametrize("kind", ["folder", "folder.csv", "foreign csv", "other kind", "fifo", "below a file",
                                  "inventory in the way"])
def test_unusable_out_is_one_line_exit_2_and_nothing_written(world, tmp_path, kind):
    d = tmp_path / "o"
    d.mkdir()
    out, msg = _bad_out(kind, d)
    before = _snapshot(d)
    _one_line_error(_cli(world, world.raw, out, tmp_path), msg)
    assert _snapshot(d) == before


# ----------------------------------------------------------------------------------------------- 5. full disk
_NO_SPACE = (r"no space left on device while writing {out} \(needs about \d+ MB more\); the rows written so far "
             r"are kept and a rerun resumes")


def _check_after_full_disk(world, out: Path, ext: str) -> None:
    """What a full disk leaves: only whole recorded folders (no half row); a rerun gives one clean run's rows."""
    ref = _read(world.ref.out)
    log_file = out.with_name(out.name + ".parts") / "progress.jsonl"
    log = [json.loads(x) for x in log_file.read_text().splitlines()] if log_file.exists() else []
    if ext == ".csv":
        data = out.read_bytes() if out.exists() else b""
        assert data == b"" or data.endswith(b"\n")
        assert len(data) == (log[-1]["end"] if log else 0)
        if data:
            kept, want = _read(out), ref.iloc[: sum(e["rows"] for e in log)]
            _same(kept.assign(frame=kept.frame.astype(float)), want.assign(frame=want.frame.astype(float)))
    res = predict(world.tmp / "ml.pt", world.raw, out, batch_size=16, progress=False, salt=SALT)
    assert res.n_units_done == len(log)
    _same(_read(out), ref)
    _same(_read(res.exams), _read(world.ref.exams))


@pytest.mark.parametrize("ext", [".csv", ".parquet"])
def test_full_disk_on_a_real_tiny_filesystem(world, tmp_path, ext):
    with tiny_disk(tmp_path / "small", 200) as small:
        st = os.statvfs(small)
        (small / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 4 * 4096))   # 4 pages left
        out = small / f"p{ext}"
        line = _one_line_error(_cli(world, world.raw, out, tmp_path))
        assert re.fullmatch(re.escape(ONE_LINE) + _NO_SPACE.format(out=re.escape(str(out))), line), line
        (small / "filler").unlink()
        _check_after_full_disk(world, out, ext)


def test_full_disk_simulated_mid_row(world, tmp_path, monkeypatch):
    """The same without root: the third folder's write stops half-way through a row with ENOSPC."""
    out, calls, write = tmp_path / "o" / "p.csv", [], predict_output._Output.write

    def full(self, rows):
        calls.append(len(rows))
        if len(calls) < 3:
            return write(self, rows)
        with open(self.out, "a") as fh:
            fh.write("e_0123456789ab,exam_00002/IM0001.dcm,0,0.5")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(predict_output._Output, "write", full)
    with pytest.raises(UsclfError, match=_NO_SPACE.format(out=re.escape(str(out)))):
        predict(world.tmp / "ml.pt", world.raw, out, batch_size=16, progress=False, salt=SALT)
    monkeypatch.undo()
    _check_after_full_disk(world, out, ".csv")

