"""Same command, same seeds -> the same metrics.json, byte for byte, even across two ingests of one export.

Each ingest draws a fresh random salt for the hashed exam/patient ids (none is configured here), so any
place where a salted id orders or selects something (split, label-fraction subset, exam sampler) shows up
as a difference in the metrics of pretrain, finetune or semisup.
"""
from __future__ import annotations

import pandas as pd

from usclf.cli import main

TINY = ["--quiet", "augment.size=32", "data.batch_size=4", "figures=false"]


def _ingest(raw, ds, monkeypatch, salt):
    monkeypatch.setenv("USCLF_PATIENT_SALT", salt)
    assert main(["ingest", str(raw), "--out", str(ds), "--labels", str(raw / "labels.csv"), "--size", "32",
                 "--quiet", "split.unlabeled=0.4", "split.train=0.2", "split.val=0.2", "split.test=0.2"]) == 0


def _stages(ds, out) -> dict[str, bytes]:
    pre = out / "pre"
    assert main(["pretrain", "--config", "configs/pretrain_lsd_demo.yaml", "--data", str(ds), "--out", str(pre),
                 "--quiet", "train.epochs=1", "augment.size=32", "data.exams_per_batch=3"]) == 0
    ft, ss = out / "ft", out / "ss"
    assert main(["finetune", "--config", "configs/finetune_demo.yaml", "--data", str(ds), "--out", str(ft),
                 "--init", str(pre / "model.pt"), "--label-fraction", "0.5", *TINY, "train.epochs=2"]) == 0
    assert main(["semisup", "--config", "configs/semisup_demo.yaml", "--data", str(ds), "--out", str(ss),
                 "--init", str(pre / "model.pt"), "--label-fraction", "0.5", *TINY, "mu=2", "eval_every=2",
                 "train.max_steps=4"]) == 0
    return {name: (d / "eval" / "metrics.json").read_bytes() for name, d in (("pretrain", pre), ("finetune", ft),
                                                                             ("semisup", ss))}


def test_two_ingests_with_other_salts_give_identical_metrics(tmp_path, mlflow_uri, monkeypatch):
    raw = tmp_path / "raw"
    assert main(["simulate", "--exams", "12", "--out", str(raw), "--frame-size", "48", "--seed", "4", "--quiet"]) == 0
    _ingest(raw, tmp_path / "ds_a", monkeypatch, "salt-one")
    _ingest(raw, tmp_path / "ds_b", monkeypatch, "salt-two")
    ids_a = pd.read_csv(tmp_path / "ds_a" / "manifest.csv")["exam_id"]
    ids_b = pd.read_csv(tmp_path / "ds_b" / "manifest.csv")["exam_id"]
    assert not (ids_a == ids_b).any()  # the salts really differ, so the ids do
    a, b = _stages(tmp_path / "ds_a", tmp_path / "a"), _stages(tmp_path / "ds_b", tmp_path / "b")
    for stage in a:
        assert a[stage] == b[stage], f"{stage} metrics differ between two ingests of the same export"
