"""`usclf study ...` like every command (issue 24): the project's errors are one line and exit 2, arguments are
checked before anything is deleted or created, a folder with the user's files is never emptied, and a failed
evidence-report leaves no empty img/ folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from usclf.cli import main


@pytest.fixture
def study(capsys, monkeypatch, tmp_path):
    """`usclf study ...` in this process (a real process costs a torch import per case on a 2-core CI)."""
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> subprocess.CompletedProcess:
        rc = main(["study", *argv])
        cap = capsys.readouterr()
        return subprocess.CompletedProcess(argv, rc, cap.out, cap.err)
    return run


def _process(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "usclf.cli", "study", *argv], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def _one_line(r: subprocess.CompletedProcess, name: str, *parts: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"usclf study {name}: error: ") and "Traceback" not in r.stderr, \
        r.stderr
    for p in parts:
        assert p in lines[0], lines[0]
    return lines[0]


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def users_folder(tmp_path) -> Path:
    d = tmp_path / "mine"
    (d / "notes").mkdir(parents=True)
    (d / "notes" / "thesis.txt").write_text("do not delete")
    (d / "data.csv").write_text("a,b\n1,2\n")
    return d


@pytest.mark.parametrize("bad", [["--exams", "0"], ["--exams", "-3"], ["--fractions", "0"],
                                 ["--fractions", "0.1", "1.5"], ["train.epochs=[1,2]"], ["no_such_key=1"]])
def test_demo_checks_its_arguments_before_touching_the_folder(users_folder, study, bad):
    before = _tree(users_folder)
    r = study("demo", "--out", str(users_folder), "--quiet", *bad)
    _one_line(r, "demo")
    assert _tree(users_folder) == before


def test_demo_never_empties_a_folder_it_did_not_write(users_folder, tmp_path):
    before = _tree(users_folder)      # a real process: the command as a user types it
    r = _process("demo", "--out", str(users_folder), "--quiet", "--exams", "20", cwd=tmp_path)
    _one_line(r, "demo", "did not write")
    assert _tree(users_folder) == before


def test_demo_recreates_only_its_own_folder(tmp_path):
    from usclf.studies.args import MARKER, recreate_out

    out = recreate_out(tmp_path / "demo")
    (out / "old_run.txt").write_text("from an earlier demo")
    recreate_out(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    legacy = tmp_path / "legacy"
    for name in ("exams", "dataset"):
        (legacy / name).mkdir(parents=True)
    (legacy / "mlflow.db").write_text("")
    recreate_out(legacy, legacy=("exams", "dataset", "mlflow.db"))
    assert sorted(p.name for p in legacy.iterdir()) == [MARKER]


@pytest.mark.parametrize("name,bad,part", [
    ("cluster-check", ["--exams", "0"], "--exams"), ("cluster-check", ["--size", "8"], "--size"),
    ("cluster-check", ["--epochs", "0"], "--epochs"), ("cluster-check", ["--lr", "0"], "--lr"),
    ("semisup-check", ["--exams", "0"], "--exams"), ("semisup-check", ["--label-fraction", "1.5"], "--label-fraction"),
    ("semisup-check", ["--seeds", "-1"], "--seeds"), ("semisup-check", ["--lsd", "missing.pt"], "--lsd"),
    ("demo", ["--exams", "0"], "--exams must be >= 20")])                 # demo into a new --out
def test_check_studies_bad_values_are_one_line_and_create_nothing(study, tmp_path, name, bad, part):
    r = study(name, "--out", str(tmp_path / "o"), *bad)
    _one_line(r, name, part)
    assert not (tmp_path / "o").exists()


def test_evidence_report_of_a_missing_run_leaves_no_img_folder(study, tmp_path):
    out = tmp_path / "docs" / "results.md"
    out.parent.mkdir()
    r = study("evidence-report", "--run", str(tmp_path / "missing"), "--out", str(out))
    _one_line(r, "evidence-report", "missing")
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("name, args", [("cluster-check", ["--out", "{out}", "--exams", "0"]),
                                        ("evidence", ["out={out}", "--quiet"])])      # out as a config key
def test_a_second_study_into_one_out_is_one_line(study, tmp_path, name, args):
    from usclf.locks import output_lock

    out = tmp_path / "o"
    with output_lock(out, f"study {name}"):                         # a first study holds --out
        r = study(name, *[a.format(out=out) for a in args])
    _one_line(r, name, f"{out} is being written by another usclf study {name}", "choose another --out")
    assert not out.exists()
