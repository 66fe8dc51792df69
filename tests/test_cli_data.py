"""End-to-end: `usclf simulate | ingest | split` through the real entry point, and config errors."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd

from usclf.cli import main
from usclf.data.manifest import validate_manifest


def test_simulate_ingest_split_cli(tmp_path, capsys):
    raw, ds = tmp_path / "raw", tmp_path / "ds"
    assert main(["simulate", "--exams", "12", "--out", str(raw), "--frame-size", "64", "--seed", "3", "--quiet"]) == 0
    assert main(["ingest", str(raw), "--out", str(ds), "--labels", str(raw / "labels.csv"), "--size", "32",
                 "--quiet", "ingest.salt=s3cr3t-salt", "split.unlabeled=0.4", "split.train=0.2", "split.val=0.2", "split.test=0.2"]) == 0
    out = capsys.readouterr().out
    assert "ingested" in out and "unlabeled" in out and "test" in out
    man = pd.read_csv(ds / "manifest_split_seed0.csv")
    classes = ["liver", "gallbladder", "kidney", "pancreas", "spleen", "bladder", "other"]
    assert validate_manifest(man, classes) == []
    assert set(man["split"]) == {"unlabeled", "train", "val", "test"}
    assert man.groupby("patient_id")["split"].nunique().max() == 1
    labels = pd.read_csv(raw / "labels.csv")
    assert len(man) == int((labels["doppler"] == 0).sum())  # every B-mode frame kept, Doppler dropped
    # nothing written beside the data carries the salt (it would unmask the hashed patient ids)
    for f in ds.rglob("*"):
        if f.is_file() and f.suffix != ".npy":
            assert b"s3cr3t-salt" not in f.read_bytes(), f
    assert main(["split", str(ds), "--seed", "1", "--quiet", "unlabeled=0.4", "train=0.2", "val=0.2",
                 "test=0.2"]) == 0
    man1 = pd.read_csv(ds / "manifest_split_seed1.csv")
    assert not man1["split"].equals(man["split"])


def test_simulate_size_is_a_deprecated_alias_of_frame_size(tmp_path, capsys, monkeypatch):
    import usclf.cli.data as cli_data
    seen = []
    monkeypatch.setattr(cli_data, "simulate", lambda out, cfg, progress: seen.append(cfg.size) or {})
    monkeypatch.setattr(cli_data, "format_summary", lambda summary: "")
    assert main(["simulate", "--out", str(tmp_path), "--frame-size", "48"]) == 0
    assert main(["simulate", "--out", str(tmp_path), "--size", "40", "--quiet"]) == 0
    assert seen == [48, 40] and "--size is deprecated, use --frame-size" in capsys.readouterr().err


def test_unknown_config_key_is_one_line_error(tmp_path, capsys):
    rc = main(["simulate", "--out", str(tmp_path / "x"), "--quiet", "exmas=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "unknown config key 'exmas'" in err[0] and "exams" in err[0]


def test_missing_input_is_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "usclf.cli", "ingest", str(tmp_path / "nope"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_help_lists_every_command():
    r = subprocess.run([sys.executable, "-m", "usclf.cli", "--help"], capture_output=True, text=True)
    for cmd in ("simulate", "ingest", "split", "pretrain", "evaluate"):
        assert cmd in r.stdout


def test_example_manifest_is_valid():
    from pathlib import Path
    from usclf.data.manifest import DEFAULT_CLASSES, read_manifest
    df = read_manifest(Path(__file__).resolve().parents[1] / "data_manifests" / "example_manifest.csv")
    assert validate_manifest(df, DEFAULT_CLASSES) == []
    bad = df.copy()
    bad.loc[0, "split"] = "val"  # one exam of patient p_9c0d11 moves to val, the other stays in train
    assert any("patient leakage" in p for p in validate_manifest(bad, DEFAULT_CLASSES))
