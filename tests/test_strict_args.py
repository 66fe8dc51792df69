"""Strict arguments and clear messages (issue 24): `usclf suggest` refuses unknown / empty `--labeled` lists, a
model of another image size or class list and a read-only `--out` (a real read-only tmpfs); stray key=value
arguments are refused by the commands without config overrides; typed config errors for lists / mappings where a
number is expected; seeds range-checked; test means test (no test_split that the stage trains on); a text file as
`--model` and a folder as `--config` say what they are. Each case is one line on stderr and exit 2."""
from __future__ import annotations

import shutil

import pytest
import torch

from conftest import calibrated
from test_dicom_sr_hardening import read_only_dir
from test_suggest import world  # noqa: F401 (module fixture: a simulated dataset, a classifier, a cluster model)
from usclf.cli import main
from usclf.models.heads import build_classifier
from usclf.models.modelfile import ModelInfo, Preprocess, save_model_file


def _err(capsys, cmd: str, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"usclf {cmd}: error: ") and "Traceback" not in err, err
    for p in parts:
        assert p in lines[0], lines[0]
    return lines[0]


def _suggest(world, out, *extra, model=None):
    tmp, ds_path, _ = world
    return main(["suggest", "--model", str(model or tmp / "ml.pt"), "--data", str(ds_path), "--budget", "3",
                 "--out", str(out), "--quiet", *extra])


# ----------------------------------------------------------------------------------------------- suggest
def test_suggest_labeled_lists_unknown_empty_or_header_only_are_one_line(world, tmp_path, capsys):
    (tmp_path / "unknown.csv").write_text("image_id\nnot-an-image\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("image_id\n")
    for name, why in (("unknown", "1 image id(s) are not rows"), ("empty", "is empty"),
                      ("header", "lists no image ids")):
        assert _suggest(world, tmp_path / "o", "--labeled", str(tmp_path / f"{name}.csv")) == 2
        _err(capsys, "suggest", why)
    assert not (tmp_path / "o").exists()


def test_finetune_empty_labeled_ids_is_one_line(world, tmp_path, capsys, mlflow_uri):
    _, ds_path, _ = world
    (tmp_path / "empty.csv").write_text("")
    assert main(["finetune", "--data", str(ds_path), "--out", str(tmp_path / "ft"), "--quiet",
                 f"labeled_ids={tmp_path / 'empty.csv'}", "train.device=cpu"]) == 2
    _err(capsys, "finetune", "is empty")


def test_suggest_refuses_a_model_of_another_image_size_or_class_list(world, tmp_path, capsys):
    tmp, _, ds = world
    torch.manual_seed(0)
    m = calibrated(build_classifier("resnet18", "multilabel", num_classes=len(ds.classes)), ds.images)
    save_model_file(tmp_path / "px64.pt", m, ModelInfo(ds.classes, "finetune", thresholds=[0.5] * len(ds.classes),
                                                       preprocess=Preprocess({"size": 64}, input_size=32)))
    assert _suggest(world, tmp_path / "o", model=tmp_path / "px64.pt") == 2
    _err(capsys, "suggest", "cache images are 32 px", "reads 64 px")
    save_model_file(tmp_path / "px16.pt", m, ModelInfo(ds.classes, "finetune", thresholds=[0.5] * len(ds.classes),
                                                       preprocess=Preprocess({"size": 16}, input_size=32)))
    assert _suggest(world, tmp_path / "o", model=tmp_path / "px16.pt") == 2    # a smaller model on a larger cache
    _err(capsys, "suggest", "cache images are 32 px", "reads 16 px")
    three = ["liver", "kidney", "spleen"]
    m3 = calibrated(build_classifier("resnet18", "multilabel", num_classes=3), ds.images)
    save_model_file(tmp_path / "c3.pt", m3, ModelInfo(three, "finetune", thresholds=[0.5] * 3,
                                                      preprocess=Preprocess({"size": 32}, input_size=32)))
    assert _suggest(world, tmp_path / "o", model=tmp_path / "c3.pt") == 2
    line = _err(capsys, "suggest", "other classes", "model 3", f"dataset {len(ds.classes)}")
    assert "evaluate" not in line
    assert not (tmp_path / "o").exists()


def test_suggest_into_a_read_only_folder_is_one_line(world, tmp_path, capsys):
    with read_only_dir(tmp_path / "ro") as ro:
        for out in (ro, ro / "new"):
            assert _suggest(world, out) == 2
            _err(capsys, "suggest", "cannot write into --out", "Read-only file system")


@pytest.mark.parametrize("cmd", ["suggest", "predict"])
def test_stray_key_value_arguments_are_refused(world, tmp_path, capsys, cmd):
    tmp, ds_path, _ = world
    if cmd == "suggest":
        rc = _suggest(world, tmp_path / "o", "budget=5")
    else:
        rc = main(["predict", "--model", str(tmp / "ml.pt"), "--input", str(tmp / "raw"), "--out",
                   str(tmp_path / "p.csv"), "batch_size=8"])
    assert rc == 2
    _err(capsys, cmd, "batch_size=8" if cmd == "predict" else "budget=5", "takes no key=value")
    assert not (tmp_path / "o").exists() and not (tmp_path / "p.csv").exists()


def test_suggest_seed_range(world, tmp_path, capsys):
    assert _suggest(world, tmp_path / "o", "--seed", "-1") == 2
    _err(capsys, "suggest", "--seed", "between 0 and")


# ----------------------------------------------------------------------------------------------- messages
def test_a_text_file_as_model_and_a_folder_as_config_say_what_they_are(world, tmp_path, capsys):
    tmp, ds_path, _ = world
    (tmp_path / "notes.txt").write_text("epochs: 5\n")
    (tmp_path / "m.pt").write_text("hello, I am not a model\n")      # a text file named like a model
    for model in ("notes.txt", "m.pt"):
        assert main(["predict", "--model", str(tmp_path / model), "--input", str(tmp / "raw"), "--out",
                     str(tmp_path / "p.csv"), "--quiet"]) == 2
        assert "checkpoint" not in _err(capsys, "predict", "is not a usclf model file", "not a PyTorch file")
        assert main(["export", "--model", str(tmp_path / model), "--format", "onnx", "--out",
                     str(tmp_path / "x.onnx"), "--quiet"]) == 2
        assert "checkpoint" not in _err(capsys, "export", "is not a usclf model file", "not a PyTorch file")
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "x.onnx").exists()
    assert main(["finetune", "--config", str(tmp_path), "--data", str(ds_path), "--out", str(tmp_path / "o")]) == 2
    _err(capsys, "finetune", "is a folder")


# ----------------------------------------------------------------------------------------------- config typing
@pytest.mark.parametrize("value", ["[1,2]", "{a: 1}", "null"])
def test_a_list_or_mapping_where_a_number_is_expected_names_the_key(world, tmp_path, capsys, value):
    _, ds_path, _ = world
    what = {"[1,2]": "a list [1, 2]", "{a: 1}": "a mapping {'a': 1}", "null": "None"}[value]
    for key, expected in (("train.epochs", "an integer"), ("train.optim.lr", "a number")):
        assert main(["finetune", "--data", str(ds_path), "--out", str(tmp_path / "o"), f"{key}={value}"]) == 2
        _err(capsys, "finetune", f"config key '{key}': expected {expected}, got {what}")
        *parents, leaf = key.split(".")                              # the same value in a YAML --config
        yaml = "".join(f"{'  ' * i}{k}:\n" for i, k in enumerate(parents)) + f"{'  ' * len(parents)}{leaf}: {value}\n"
        (tmp_path / "c.yaml").write_text(yaml)
        assert main(["finetune", "--config", str(tmp_path / "c.yaml"), "--data", str(ds_path), "--out",
                     str(tmp_path / "o")]) == 2
        _err(capsys, "finetune", f"config key '{key}': expected {expected}, got {what}")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["finetune", "--seed", "-1"], ["semisup", "--seed", "4294967296"],
                                  ["finetune", "fraction_seed=-3"], ["pretrain", "--seed", "-1"]])
def test_seeds_are_range_checked(world, tmp_path, capsys, argv):
    _, ds_path, _ = world
    assert main([argv[0], "--data", str(ds_path), "--out", str(tmp_path / "o"), *argv[1:]]) == 2
    _err(capsys, argv[0], "seed", "between 0 and 4294967295")
    assert not (tmp_path / "o").exists()


def test_split_and_simulate_seeds_are_range_checked(world, tmp_path, capsys):
    _, ds_path, _ = world
    assert main(["simulate", "--exams", "2", "--out", str(tmp_path / "s"), "--seed", "-1"]) == 2
    _err(capsys, "simulate", "between 0 and")
    copy = tmp_path / "ds"
    shutil.copytree(ds_path, copy)
    assert main(["split", str(copy), "--seed", "-1"]) == 2
    _err(capsys, "split", "between 0 and")


# ----------------------------------------------------------------------------------------------- test means test
@pytest.mark.parametrize("argv", [["finetune", "test_split=train"], ["semisup", "test_split=train"],
                                  ["semisup", "test_split=unlabeled"], ["pretrain", "test_split=unlabeled"],
                                  ["semisup", "test_split=extra", "unlabeled_splits=[unlabeled,extra]"]])
def test_a_test_split_the_stage_trains_on_is_refused(world, tmp_path, capsys, argv):
    _, ds_path, _ = world
    assert main([argv[0], "--data", str(ds_path), "--out", str(tmp_path / "o"), *argv[1:]]) == 2
    _err(capsys, argv[0], "test_split", "trains on")
    assert not (tmp_path / "o").exists()


def test_the_held_out_split_passes_the_check():
    from usclf.stages.stage_configs import FinetuneConfig, PretrainConfig, SemisupConfig, check_config

    FinetuneConfig(test_split="test")
    PretrainConfig(test_split="test")
    check_config(SemisupConfig(test_split="test"))


# ----------------------------------------------------------------------------------------------- one writer
def test_a_second_suggest_into_one_out_stops_before_its_inference(world, tmp_path):
    import os
    import subprocess
    import sys

    from usclf.locks import output_lock

    tmp, ds_path, _ = world
    out = tmp_path / "o"
    with output_lock(out, "suggest"):               # a first suggest (this process) is writing --out
        r = subprocess.run([sys.executable, "-m", "usclf.cli", "suggest", "--model", str(tmp / "ml.pt"), "--data",
                            str(ds_path), "--budget", "3", "--out", str(out), "--quiet"], capture_output=True,
                           text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "is being written by another usclf suggest (pid" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
