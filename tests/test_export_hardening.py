"""`usclf export` never deletes what the user made and never interleaves two writers: --overwrite replaces only
usclf's own exports, --out may not be the model's run folder or the data folder, strict arguments, a read-only
--out, and two real export processes on one --out."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from usclf.cli import main
from usclf.data.cache import open_dataset
from usclf.data.ingest import IngestConfig, ingest
from usclf.data.simulate import SimulateConfig, simulate
from usclf.data.transforms import AugmentConfig
from usclf.models.heads import build_classifier
from usclf.models.modelfile import ModelInfo, save_model_file
from usclf.stages.common import preprocess_meta

ONE_LINE = "usclf export: error: "
BACKBONE = "resnet18"


def make_world(tmp: Path) -> SimpleNamespace:
    """A 3-exam dataset (36 px cache, 32 px input) and a thresholded model file writer."""
    raw = tmp / "raw"
    simulate(raw, SimulateConfig(exams=3, size=48, seed=5, doppler_rate=0.0), progress=False)
    (raw / "labels.csv").unlink()
    ingest(raw, tmp / "ds", None, IngestConfig(size=36, salt="export-hardening"), progress=False)
    ds = open_dataset(tmp / "ds")
    pre = preprocess_meta(ds, AugmentConfig(size=32))

    def model(path: Path, f1: float | None = None, seed: int = 0, classes: list[str] | None = None) -> Path:
        cls = list(classes or ds.classes)
        torch.manual_seed(seed)
        m = build_classifier(BACKBONE, "multilabel", num_classes=len(cls)).eval()
        prov = {} if f1 is None else {"best_val_f1": f1}
        return save_model_file(path, m, ModelInfo(cls, "finetune", "multilabel", preprocess=pre,
                                                  thresholds=[0.5] * len(cls), provenance=prov))
    return SimpleNamespace(tmp=tmp, raw=raw, ds=tmp / "ds", classes=list(ds.classes), model=model)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    w = make_world(tmp_path_factory.mktemp("export_hard"))
    w.ml = w.model(w.tmp / "models" / "ml.pt", f1=0.6)
    return w


def snapshot(d: Path) -> dict[str, bytes | None]:
    return {p.relative_to(d).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(d.rglob("*"))}


def one_line(rc: int, err: str, *parts: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(ONE_LINE) and "Traceback" not in err, (rc, err)
    for p in parts:
        assert p in lines[0], lines[0]
    return lines[0]


def export(capsys, *args: str) -> tuple[int, str]:
    rc = main(["export", "--quiet", *map(str, args)])
    return rc, capsys.readouterr().err


def no_leftovers(folder: Path) -> None:
    left = [p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".lock"))]
    assert not left, left


def test_overwrite_replaces_only_usclf_exports(world, tmp_path, capsys):
    runs = tmp_path / "myruns"                                   # the user's folder of runs
    (runs / "run1").mkdir(parents=True)
    (runs / "run1" / "config.yaml").write_text("method: lsd\n")
    (runs / "notes.txt").write_text("mine")
    user = tmp_path / "user.onnx"
    user.write_bytes(b"not an export, but mine")
    before = snapshot(tmp_path)
    rc, err = export(capsys, "--model", world.ml, "--format", "mlflow", "--out", runs, "--overwrite")
    one_line(rc, err, "usclf export did not write", "--overwrite replaces only usclf's own exports")
    rc, err = export(capsys, "--model", world.ml, "--format", "onnx", "--out", user, "--overwrite")
    one_line(rc, err, "did not write")
    assert snapshot(tmp_path) == before

    a, m = tmp_path / "a.onnx", tmp_path / "m"                  # usclf's own exports are replaced
    for out, fmt in ((a, "onnx"), (m, "mlflow")):
        assert export(capsys, "--model", world.ml, "--format", fmt, "--out", out)[0] == 0
        assert export(capsys, "--model", world.ml, "--format", fmt, "--out", out, "--overwrite")[0] == 0
    (m / "notes.txt").write_text("added by the user")          # ... unless the user put something inside
    one_line(*export(capsys, "--model", world.ml, "--format", "mlflow", "--out", m, "--overwrite"), "did not write")
    assert (m / "notes.txt").read_text() == "added by the user" and (m / "MLmodel").is_file()
    (m / "notes.txt").unlink()
    assert export(capsys, "--model", world.ml, "--format", "mlflow", "--out", m, "--overwrite")[0] == 0
    ts = tmp_path / "t.pt"
    assert export(capsys, "--model", world.ml, "--format", "torchscript", "--out", ts)[0] == 0
    shutil.copy(world.ml, tmp_path / "model_copy.pt")            # a usclf *model file* is not an export
    one_line(*export(capsys, "--model", world.ml, "--format", "torchscript", "--out", tmp_path / "model_copy.pt",
                     "--overwrite"), "did not write")
    assert export(capsys, "--model", world.ml, "--format", "torchscript", "--out", ts, "--overwrite")[0] == 0
    no_leftovers(tmp_path)


def test_out_in_the_run_folder_or_data_folder_is_refused(world, tmp_path, capsys):
    ft = tmp_path / "ft"
    ft.mkdir()
    shutil.copy(world.ml, ft / "model.pt")
    (ft / "config.yaml").write_text("out: ft\n")
    (ft / "eval").mkdir()
    shutil.copy(world.ml, ft / "eval" / "model.pt")
    before = snapshot(tmp_path)
    model = ft / "model.pt"
    cases = [(["--format", "torchscript", "--out", model, "--overwrite"], "is or holds the --model file"),
             (["--format", "mlflow", "--out", ft, "--overwrite"], "is or holds the --model file"),
             (["--format", "mlflow", "--out", tmp_path, "--overwrite"], "is or holds the --model file"),
             (["--format", "onnx", "--out", ft / "model.onnx"], "lies in the run folder"),
             (["--format", "onnx", "--out", ft / "eval" / "model.onnx"], "lies in the run folder"),
             (["--format", "onnx", "--out", world.ds / "x.onnx", "--data", world.ds], "--data folder"),
             (["--format", "mlflow", "--out", world.ds, "--data", world.ds, "--overwrite"], "--data folder")]
    for args, msg in cases:
        one_line(*export(capsys, "--model", model, *args), msg)
    eval_model = ft / "eval" / "model.pt"                       # evaluate's model: its run folder is ft too
    one_line(*export(capsys, "--model", eval_model, "--format", "onnx", "--out", ft / "x.onnx"), "run folder")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args, msg", [
    (["--format", "torchscript", "--out", "x.onnx"], "--format torchscript writes a .pt"),
    (["--format", "onnx", "--out", "x.pt"], "--format onnx writes a .onnx file"),
    (["--format", "onnx", "--out", "x"], "--format onnx writes a .onnx file"),
    (["--format", "mlflow", "--out", "x.onnx"], "--format mlflow writes a folder"),
    (["--format", "onnx", "--out", "x.onnx", "tol=1"], "tol=1"),
    (["--format", "onnx", "--out", "x.onnx", "export.opset=13"], "key=value"),
    (["--format", "mlflow", "--out", "."], "exists"),
    (["--format", "mlflow", "--out", ".", "--overwrite"], "did not write"),
    (["--format", "onnx", "--out", ""], "--out is empty"),
])
def test_strict_arguments_are_one_line(world, tmp_path, monkeypatch, capsys, args, msg):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("mine")
    one_line(*export(capsys, "--model", world.ml, *args), msg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def _readonly(folder: Path):
    """Make `folder` unwritable for this process: `chattr +i` as root (root ignores modes), else chmod."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    r = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make a folder read-only here (chattr: {r.stderr.strip()[:80]})")
    return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("fmt, name", [("onnx", "x.onnx"), ("mlflow", "m")])
def test_read_only_out_is_one_line(world, tmp_path, capsys, fmt, name):
    ro = tmp_path / "ro"
    ro.mkdir()
    undo = _readonly(ro)
    try:
        one_line(*export(capsys, "--model", world.ml, "--format", fmt, "--out", ro / name), "cannot write")
        assert list(ro.iterdir()) == []
    finally:
        undo()


def _cli(*args) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "usclf.cli", "export", "--quiet", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_exports_to_one_out_at_once(world, tmp_path):
    """Two real processes: one writes the export, the other says so in one line (exit 2); no stray files."""
    out = tmp_path / "same.onnx"
    procs = [_cli("--model", world.ml, "--format", "onnx", "--out", out, "--data", world.ds) for _ in range(2)]
    res = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert sorted(r[0] for r in res) == [0, 2], res
    err = next(r[2] for r in res if r[0] == 2)
    line = one_line(2, err)
    assert "being written by another usclf export" in line or "exists" in line, line
    assert "disagrees" not in line
    import onnxruntime as ort
    s, lab = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"pixels": np.zeros((1, 1, 32, 32), np.float32)})
    assert s.shape == lab.shape == (1, len(world.classes))
    no_leftovers(tmp_path)
