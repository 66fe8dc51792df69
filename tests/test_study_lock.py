"""Studies take the same exclusive --out lock (usclf.locks) whether run as `usclf study NAME` or as
`python pipelines/NAME.py`, with real processes: the second writer stops with one line (exit 2) and writes
nothing; a study run as a script reports the project's errors as one line too (was: a traceback)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_run_lock import Holder
from usclf.locks import lock_path

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def _pipeline(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "pipelines" / script), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=_env(), timeout=300)


def _one_line(r: subprocess.CompletedProcess, prefix: str, *parts: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])
    assert lines[0].startswith(f"{prefix}: error: "), lines[0]
    for p in parts:
        assert p in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("script, args", [
    ("evidence.py", ["out={out}", "--quiet"]),                      # the out is a config key
    ("demo.py", ["--out", "{out}", "--exams", "20", "--quiet"]),
    ("semisup_check.py", ["--out", "{out}", "--exams", "20"]),
    ("label_fraction_study.py", ["out={out}", "--quiet"]),
    ("cluster_check.py", ["--out", "{out}", "--exams", "20"]),
])
def test_a_pipeline_study_on_a_held_out_writes_nothing(tmp_path, script, args):
    out = tmp_path / "study"
    holder = Holder(out, "study evidence")
    try:
        r = _pipeline(script, *[a.format(out=out) for a in args], cwd=tmp_path)
        _one_line(r, f"pipelines/{script}", f"{out} is being written by another usclf study evidence "
                  f"(pid {holder.p.pid})", "choose another --out")
        assert not out.exists()
    finally:
        holder.kill()


@pytest.mark.slow
def test_usclf_study_waits_for_a_running_pipeline_study(tmp_path):
    """A real `python pipelines/cluster_check.py` holds its --out while it works; `usclf study cluster-check` on
    the same folder is refused, naming it; once the first is gone (killed) the folder is free again."""
    out = tmp_path / "cc"
    first = subprocess.Popen([sys.executable, str(REPO / "pipelines" / "cluster_check.py"), "--out", str(out),
                              "--exams", "20", "--size", "32", "--epochs", "1"], cwd=tmp_path, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (lock_path(out).is_file() and lock_path(out).read_text().startswith(str(first.pid))):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the pipeline never took its lock"
            time.sleep(0.2)
        r = subprocess.run([sys.executable, "-m", "usclf.cli", "study", "cluster-check", "--out", str(out),
                            "--exams", "20"], capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=300)
        _one_line(r, "usclf study cluster-check", f"{out} is being written by another usclf study cluster-check "
                  f"(pid {first.pid})")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        first.stderr.close()
    r = _pipeline("cluster_check.py", "--out", out, "--exams", "0", cwd=tmp_path)   # free: its own check answers
    _one_line(r, "pipelines/cluster_check.py", "--exams must be >= 20")


def test_a_pipeline_study_reports_errors_as_one_line(tmp_path):
    r = _pipeline("evidence.py", f"out={tmp_path / 'ev'}", "no_such_key=1", cwd=tmp_path)
    _one_line(r, "pipelines/evidence.py", "no_such_key")
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("script", ["demo.py", "cluster_check.py"])
def test_a_refused_study_leaves_no_parent_folder(tmp_path, script):
    """The lock creates missing parents of --out; a study refused on its arguments removes them again."""
    r = _pipeline(script, "--out", tmp_path / "a" / "b" / "study", "--exams", "0", cwd=tmp_path)
    _one_line(r, f"pipelines/{script}", "--exams must be >= 20")
    assert list(tmp_path.iterdir()) == []
