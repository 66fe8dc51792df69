"""`usclf predict` under torchrun (2 gloo processes on the CPU): the same bytes as one process, resume after a
killed rank, a crash during the merge, the lock, and the sharding itself."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from conftest import calibrated
from usclf.data.manifest import DEFAULT_CLASSES
from usclf.data.simulate import SimulateConfig, simulate
from usclf.errors import UsclfError
from usclf.models.heads import build_classifier
from usclf.models.modelfile import ModelInfo, Preprocess, save_model_file
from usclf.predict import output as predict_output
from usclf.predict.progress import Unit, output_lock
from usclf.predict.run import predict
from usclf.predict.shard import predict_any, predict_ranks, shard_units

SALT = "ddp-predict-salt"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    """4 simulated exams (PNG/JPEG/DICOM) at 48 px, a folder of odd files with a sub-folder, an empty exam
    folder; a ResNet18 at 32 px whose outputs depend on the image; the 1-process reference outputs."""
    tmp = tmp_path_factory.mktemp("pddp")
    raw = tmp / "raw"
    simulate(raw, SimulateConfig(exams=4, size=48, format="mixed", seed=5, frames_min=3, frames_max=6,
                                 doppler_rate=0.1), progress=False)
    (raw / "labels.csv").unlink()
    odd = raw / "zz_odd"
    (odd / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(odd / "a.png"), rng.integers(0, 255, (48, 48), dtype=np.uint8))
    cv2.imwrite(str(odd / "sub" / "deep.png"), rng.integers(0, 255, (40, 52), dtype=np.uint8))
    (odd / "zero.png").write_bytes(b"")
    (odd / "notes.txt").write_text("not an image\n")
    (raw / "zz_empty").mkdir()
    torch.manual_seed(0)
    model = calibrated(build_classifier("resnet18", "multilabel", num_classes=len(DEFAULT_CLASSES)),
                       list(rng.integers(0, 255, (16, 32, 32), dtype=np.uint8)))
    save_model_file(tmp / "ml.pt", model, ModelInfo(list(DEFAULT_CLASSES), "finetune",
                                                    preprocess=Preprocess({"size": 32}),
                                                    thresholds=[0.5] * len(DEFAULT_CLASSES)))
    refs = {ext: predict(tmp / "ml.pt", raw, tmp / "ref" / f"p{ext}", batch_size=1, progress=False, salt=SALT)
            for ext in (".csv", ".jsonl", ".parquet")}
    return SimpleNamespace(tmp=tmp, raw=raw, model=tmp / "ml.pt", refs=refs)


def _rows(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype={"exam_id": str, "reason": str})
    return pd.read_csv(path, dtype={"exam_id": str, "path": str}, keep_default_na=False, na_values=[""])


def _same_output(world, out: Path, exams: Path) -> None:
    """The files a 1-process run writes: byte for byte (csv/jsonl), every value (parquet)."""
    ref = world.refs[out.suffix]
    if out.suffix == ".parquet":
        pd.testing.assert_frame_equal(_rows(out), _rows(ref.out))
        pd.testing.assert_frame_equal(_rows(exams), _rows(ref.exams))
    else:
        assert out.read_bytes() == ref.out.read_bytes()
        assert exams.read_bytes() == ref.exams.read_bytes()
    assert not (out.with_name(out.name + ".parts") / "ranks").exists()


def _log(state: Path) -> list[dict]:
    f = state / "progress.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []


def test_shards_are_disjoint_complete_deterministic_and_balanced():
    units = [Unit(f"e{i}", [f"f{j}" for j in range(n)]) for i, n in enumerate([5, 1, 1, 3, 2, 2, 4])]
    units.append(Unit("empty/", note="empty exam folder"))
    shards = shard_units(units, 3)
    assert shard_units(units, 3) == shards
    names = [u.name for s in shards for u in s]
    assert sorted(names) == sorted(u.name for u in units) and len(set(names)) == len(names)
    loads = [sum(len(u.files) or 1 for u in s) for s in shards]
    assert max(loads) - min(loads) <= 5 and sum(loads) == 19     # list scheduling: within the largest folder
    for s in shards:                                    # each rank keeps walk order
        assert [units.index(u) for u in s] == sorted(units.index(u) for u in s)
    assert shard_units(units, 1) == [units]


@pytest.mark.slow
def test_two_gloo_ranks_under_torchrun_write_what_one_process_writes(world, tmp_path):
    out = tmp_path / "ddp" / "p.csv"
    env = dict(os.environ, USCLF_PATIENT_SALT=SALT, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "usclf.cli", "predict", "--model", str(world.model), "--input", str(world.raw),
                        "--out", str(out), "--device", "cpu", "--batch-size", "1", "--quiet"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    _same_output(world, out, out.with_name("p_exams.csv"))
    assert r.stdout.count("predicted ") == 1, r.stdout             # rank 0 reports, once
    ref = world.refs[".csv"]
    assert f"predicted {ref.n_predicted} frames, {ref.n_skipped} rows skipped" in r.stdout


# ----------------------------------------------------------------------------------------------- killed rank
def _kill_self_after_first_folder(unit: str, n_rows: int) -> None:
    os.kill(os.getpid(), signal.SIGKILL)       # no cleanup code runs, as with a real crash


def _rank_main(rank: int, world_size: int, port: int, model: str, raw: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    hook = _kill_self_after_first_folder if rank == 1 else None
    predict_any(model, raw, out, batch_size=1, device="cpu", progress=False, salt=SALT, on_unit=hook)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_killed_rank_leaves_the_output_untouched_and_a_rerun_completes_it(world, tmp_path):
    out = tmp_path / "o" / "p.csv"
    state = out.with_name("p.csv.parts")
    ctx = mp.start_processes(_rank_main, args=(2, _free_port(), str(world.model), str(world.raw), str(out)),
                             nprocs=2, join=False, start_method="spawn")
    start = time.time()
    try:
        # rank 1's kill (join then stops the other rank, as torchrun would)
        with pytest.raises((mp.ProcessExitedException, mp.ProcessRaisedException)):
            while not ctx.join(timeout=30):
                if time.time() - start > 300:
                    pytest.fail("the 2-rank predict did not end in 300 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    assert ctx.processes[1].exitcode == -signal.SIGKILL
    # nothing merged: the output has no recorded folder and no inventory; rank 1's first folder is in its part
    assert _log(state) == [] and not out.with_name("p_exams.csv").exists()
    assert not out.exists() or out.stat().st_size == 0
    r1 = _log(state / "ranks" / "r1.csv.parts")
    assert len(r1) == 1
    recorded = {e["unit"] for r in (0, 1) for e in _log(state / "ranks" / f"r{r}.csv.parts")}
    # what a kill in the middle of rank 1's next folder leaves: half a row, half a progress line
    with open(state / "ranks" / "r1.csv", "a") as fh:
        fh.write("e_0123456789ab,exam_00001/IMG_0001.jpg,0,0.51")
    with open(state / "ranks" / "r1.csv.parts" / "progress.jsonl", "a") as fh:
        fh.write('{"unit": "exam_00002", "ro')
    # a rerun with one process: merges both ranks' parts and predicts only what no part holds
    seen = []
    res = predict_any(world.model, world.raw, out, batch_size=1, progress=False, salt=SALT,
                      on_unit=lambda unit, n: seen.append(unit))
    every = {e["unit"] for e in _log(world.refs[".csv"].out.with_name("p.csv.parts"))}
    assert not set(seen) & recorded and set(seen) | recorded == every
    _same_output(world, out, res.exams)
    assert res.n_units_done == 0 and res.n_rows == len(_rows(out))
    again = predict_any(world.model, world.raw, out, progress=False, salt=SALT)    # nothing left to do
    assert again.n_rows == 0 and again.n_units_done == again.n_units
    _same_output(world, out, res.exams)


# ----------------------------------------------------------------------------------------------- merge crash
class _Stop(Exception):
    pass


@pytest.mark.parametrize("ext", [".jsonl", ".parquet"])
def test_a_crash_during_the_merge_leaves_a_resumable_output(world, tmp_path, monkeypatch, ext):
    out = tmp_path / "o" / f"p{ext}"
    state = out.with_name(out.name + ".parts")

    def stop_second(unit, n):
        if unit == "exam_00001":
            raise _Stop

    with pytest.raises(_Stop):                  # a 1-rank job stopped while predicting: only its part has rows
        predict_ranks(world.model, world.raw, out, batch_size=1, progress=False, salt=SALT, on_unit=stop_second)
    assert [e["unit"] for e in _log(state / "ranks" / f"r0{ext}.parts")] == ["exam_00000", "exam_00001"]
    assert _log(state) == [] and not (out.exists() and out.stat().st_size)

    copy, calls = predict_output._Output.copy_folder, []

    def die_on_third(self, *a):                 # a kill half-way through the merge: rows copied, none recorded
        calls.append(1)
        if len(calls) == 3:
            raise _Stop
        return copy(self, *a)

    monkeypatch.setattr(predict_output._Output, "copy_folder", die_on_third)
    monkeypatch.setattr(predict_output._Output, "abort", lambda self: None)     # no cleanup, as after kill -9
    with pytest.raises(_Stop):
        predict_any(world.model, world.raw, out, batch_size=1, progress=False, salt=SALT)
    monkeypatch.undo()
    assert _log(state) == [] and not out.with_name(f"p_exams{ext}").exists()
    # and one after the output recorded every folder, before the inventory and the parts' removal
    def stop(self, exams):
        raise _Stop

    monkeypatch.setattr(predict_output._Output, "finish", stop)
    with pytest.raises(_Stop):
        predict_any(world.model, world.raw, out, batch_size=1, progress=False, salt=SALT)
    monkeypatch.undo()
    assert len(_log(state)) == world.refs[ext].n_units and (state / "ranks").is_dir()
    res = predict_any(world.model, world.raw, out, batch_size=1, progress=False, salt=SALT)
    assert res.n_rows == 0 and res.n_units_done == res.n_units
    _same_output(world, out, res.exams)


def test_a_second_job_on_a_locked_output_stops_before_writing(world, tmp_path):
    out = tmp_path / "o" / "p.csv"
    state = out.with_name("p.csv.parts")
    with output_lock(state, out):
        with pytest.raises(UsclfError, match=rf"being written by another usclf predict \(pid {os.getpid()}\)"):
            predict_ranks(world.model, world.raw, out, batch_size=1, progress=False, salt=SALT)
    assert sorted(p.name for p in state.iterdir()) == ["lock"] and not out.exists()
