"""The model registry behind `usclf export --register` (real MLflow, sqlite stores): the alias follows the
unrounded validation F1, never moves on a tie or a re-registration of the same model, refuses another class
list; bad names, reserved aliases, unreachable servers and unwritable stores are one line with no export left;
two first registrations into one fresh DB (two real processes) both land."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from test_export_hardening import _readonly, make_world, no_leftovers, one_line


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("registry"))
    m = w.tmp / "models"
    w.a = w.model(m / "a.pt", f1=0.6123454, seed=0)    # rounds *down* to 0.612345 at 6 decimals
    w.tie = w.model(m / "tie.pt", f1=0.6123454, seed=1)  # another model, the same F1
    w.better = w.model(m / "better.pt", f1=0.6123455, seed=2)  # better only beyond the 6th decimal
    w.three = w.model(m / "three.pt", f1=0.9, seed=3, classes=["a", "b", "c"])
    return w


def register(capsys, model, out, uri, *extra) -> tuple[int, str, str]:
    rc = main_export(model, out, uri, *extra)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def main_export(model, out, uri, *extra) -> int:
    from usclf.cli import main
    return main(["export", "--model", str(model), "--format", "mlflow", "--out", str(out), "--register", "organs",
                 "--tracking-uri", uri, "--quiet", *map(str, extra)])


def versions(uri: str, name: str = "organs") -> list[int]:
    return sorted(int(v.version) for v in MlflowClient(uri).search_model_versions(f"name = '{name}'"))


def champion(uri: str) -> int:
    return int(MlflowClient(uri).get_model_version_by_alias("organs", "champion").version)


def test_champion_moves_only_on_a_strictly_better_unrounded_f1(world, tmp_path, mlflow_uri, capsys):
    rc, out, _ = register(capsys, world.a, tmp_path / "e1", mlflow_uri)
    assert rc == 0 and "now the champion" in out
    rc, out, _ = register(capsys, world.a, tmp_path / "e2", mlflow_uri)   # the same model again
    assert rc == 0 and "champion stays version 1" in out
    rc, out, _ = register(capsys, world.tie, tmp_path / "e3", mlflow_uri)  # a tie
    assert rc == 0 and "champion stays version 1" in out
    rc, out, _ = register(capsys, world.better, tmp_path / "e4", mlflow_uri)
    assert rc == 0 and "now the champion" in out
    assert versions(mlflow_uri) == [1, 2, 3, 4] and champion(mlflow_uri) == 4
    assert MlflowClient(mlflow_uri).get_model_version("organs", "4").tags["val_f1"] == repr(0.6123455)


def test_another_class_list_is_refused_before_anything_is_written(world, tmp_path, mlflow_uri, capsys):
    assert register(capsys, world.a, tmp_path / "e1", mlflow_uri)[0] == 0
    rc, _, err = register(capsys, world.three, tmp_path / "e2", mlflow_uri)
    one_line(rc, err, "predicts 3 classes (a, b, c)", f"registered model organs predicts {len(world.classes)}")
    assert versions(mlflow_uri) == [1] and champion(mlflow_uri) == 1
    assert not (tmp_path / "e2").exists()


@pytest.mark.parametrize("extra, msg", [(["--register", ""], "must be non-empty"),
                                        (["--register", " "], "must be non-empty"),
                                        (["--register", "a/b"], "'/'"),
                                        (["--alias", "latest"], "reserves 'latest'"),
                                        (["--alias", "v2"], "reserves 'latest' and 'v<number>'")])
def test_bad_names_and_reserved_aliases(world, tmp_path, mlflow_uri, capsys, extra, msg):
    rc, _, err = register(capsys, world.a, tmp_path / "e", mlflow_uri, *extra)   # the last --register wins
    one_line(rc, err, msg)
    assert not (tmp_path / "e").exists() and versions(mlflow_uri) == []


def test_unreachable_server_fails_within_seconds(world, tmp_path, capsys):
    t = time.monotonic()
    rc, _, err = register(capsys, world.a, tmp_path / "e", "http://127.0.0.1:9")
    assert time.monotonic() - t < 20
    one_line(rc, err, "tracking server http://127.0.0.1:9 is not reachable")
    assert not (tmp_path / "e").exists()
    no_leftovers(tmp_path)


def test_unwritable_sqlite_store(world, tmp_path, capsys):
    (tmp_path / "afile").write_text("a file, not a folder")
    rc, _, err = register(capsys, world.a, tmp_path / "e", f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}")
    one_line(rc, err, "cannot write the MLflow store", "afile is a file, not a folder")
    (tmp_path / "ro").mkdir()
    undo = _readonly(tmp_path / "ro")
    try:
        rc, _, err = register(capsys, world.a, tmp_path / "e", f"sqlite:///{tmp_path / 'ro' / 'mlflow.db'}")
        one_line(rc, err, "cannot write the MLflow store")
        assert list((tmp_path / "ro").iterdir()) == []
    finally:
        undo()
    assert not (tmp_path / "e").exists()


_REGISTER = """import sys
from usclf.cli import main
sys.exit(main(["export", "--model", sys.argv[1], "--format", "mlflow", "--out", sys.argv[2], "--register",
               "organs", "--tracking-uri", sys.argv[3], "--quiet"]))
"""


def test_two_first_registrations_into_a_fresh_db_both_land(world, tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"          # no DB yet: both processes would migrate it
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _REGISTER, str(m), str(tmp_path / f"e{i}"), uri],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i, m in enumerate((world.a, world.better))]
    res = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert [r[0] for r in res] == [0, 0], res
    assert versions(uri) == [1, 2] and (tmp_path / "e0" / "MLmodel").is_file() and (tmp_path / "e1").is_dir()
    best = MlflowClient(uri).get_model_version("organs", str(champion(uri)))   # either order: the better F1
    assert best.tags["val_f1"] == repr(0.6123455)


def test_alias_holds_the_best_whatever_the_order(world, tmp_path, mlflow_uri, capsys):
    assert register(capsys, world.better, tmp_path / "e1", mlflow_uri)[0] == 0
    rc, out, _ = register(capsys, world.a, tmp_path / "e2", mlflow_uri)
    assert rc == 0 and "champion stays version 1" in out and champion(mlflow_uri) == 1
