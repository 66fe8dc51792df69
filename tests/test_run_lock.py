"""One writer per output (usclf.locks) with real processes: a training run or an export on an --out another usclf
process holds stops with one line (exit 2) and writes nothing, not even config.yaml; a killed holder never blocks
the next run; two first MLflow runs into one fresh sqlite DB both start."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import simulated_dataset
from usclf.errors import UsclfError
from usclf.locks import lock_path, output_lock

TINY = ["data.exams_per_batch=2", "data.max_images_per_exam=4", "augment.size=32", "train.progress=false",
        "train.epochs=1"]                                   # pretrain
SMALL = ["--init", "random", "--quiet", "augment.size=32", "data.batch_size=4", "figures=false"]  # finetune, semisup

_HOLDER = """import sys, time
from usclf.locks import output_lock
with output_lock(sys.argv[1], sys.argv[2]):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return simulated_dataset(tmp_path_factory.mktemp("run_lock"), 12, seed=1, raw_size=64)


class Holder:
    """A real process holding the lock of `out` as usclf `command` until killed."""

    def __init__(self, out: Path, command: str):
        self.p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out), command], stdout=subprocess.PIPE,
                                  text=True)
        assert self.p.stdout.readline().strip() == "locked"

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()
        self.p.stdout.close()


def _usclf(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "usclf.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def _one_line(r: subprocess.CompletedProcess, command: str, *parts: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    assert lines[0].startswith(f"usclf {command}: error: "), lines[0]
    for p in parts:
        assert p in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command, extra", [("finetune", [*SMALL, "train.epochs=1"]),
                                            ("semisup", [*SMALL, "train.max_steps=2"]),
                                            ("pretrain", TINY)])
@pytest.mark.slow
def test_second_training_run_on_a_held_out_writes_nothing(dataset, tmp_path, mlflow_uri, command, extra):
    out = tmp_path / "ftc"
    holder = Holder(out, "finetune")
    try:
        r = _usclf(command, "--data", dataset, "--out", out, "--tracking-uri", mlflow_uri, *extra,
                   cwd=tmp_path)
        _one_line(r, command, f"{out} is being written by another usclf finetune (pid {holder.p.pid})",
                  "choose another --out")
        assert not out.exists()                                      # no config.yaml, no folder
    finally:
        holder.kill()
    assert lock_path(out).exists()                                   # a killed holder leaves its file ...
    if command == "finetune":                                        # ... which never blocks the next run
        r = _usclf(command, "--data", dataset, "--out", out, "--tracking-uri", mlflow_uri, *extra,
                   cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert (out / "model.pt").is_file() and (out / "config.yaml").is_file()
        assert not lock_path(out).exists()                           # a run that ends removes its lock file


def test_export_on_a_held_out_says_who_holds_it(dataset, tmp_path):
    from test_export_hardening import make_world
    w = make_world(tmp_path / "w")
    model = w.model(tmp_path / "ml.pt", f1=0.5)
    out = tmp_path / "x.onnx"
    holder = Holder(out, "export")
    try:
        r = _usclf("export", "--model", model, "--format", "onnx", "--out", out, "--quiet", cwd=tmp_path)
        _one_line(r, "export", f"is being written by another usclf export (pid {holder.p.pid})")
        assert not out.exists() and not list(tmp_path.glob(".x.onnx.*.tmp"))
    finally:
        holder.kill()


def test_lock_in_process(tmp_path):
    out = tmp_path / "a" / "b"
    with output_lock(out, "suggest"):
        assert lock_path(out).read_text() == f"{os.getpid()} suggest"
        with pytest.raises(UsclfError, match=rf"another usclf suggest \(pid {os.getpid()}\)"):
            with output_lock(out, "suggest"):
                pass
    assert not lock_path(out).exists() and not out.exists()
    assert not (tmp_path / "a").exists()                             # the parent it made, empty again, is gone
    with output_lock(out, "suggest"):                                # free again
        pass


_TRACK = """import sys
from usclf.tracking import Tracker
with Tracker(sys.argv[1], "race", run_name=sys.argv[2], params={"i": sys.argv[2]}):
    pass
"""


def test_two_first_runs_into_a_fresh_sqlite_db_both_start(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _TRACK, uri, str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    res = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
    assert [r[0] for r in res] == [0, 0], res
    from mlflow import MlflowClient
    c = MlflowClient(uri)
    assert len(c.search_runs([c.get_experiment_by_name("race").experiment_id])) == 2
