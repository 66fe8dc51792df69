"""MLflow wrapper against a real sqlite store: params, metrics, tags, artefacts, nesting, disabled ranks."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from usclf.errors import UsclfError
from usclf.tracking import MAX_PARAM_VAL_LENGTH, Tracker, default_tracking_uri, flatten_params, mlflow_key
from usclf.train.loop import OptimConfig, TrainConfig, Trainer


def _local(uri: str) -> Path:
    return Path(url2pathname(urlparse(uri).path))


def test_run_logs_params_metrics_tags_and_artifacts(mlflow_uri, tmp_path):
    params = {"train": {"optim": {"lr": 1e-4, "name": "adam"}, "epochs": 3}, "note": "x" * 10000}
    art = tmp_path / "report.csv"
    art.write_text("a,b\n1,2\n")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "curve.txt").write_text("curve")
    with Tracker(experiment="study one", run_name="pretrain-s0", params=params, tags={"stage": "pretrain"}) as tr:
        tr.log_metrics({"loss": 1.5, "acc": torch.tensor(0.25)}, step=0)
        tr.log_metrics({"loss": 0.5}, step=1)
        tr.set_tags({"seed": 0})
        tr.log_artifact(art)
        tr.log_artifacts(tmp_path / "plots", artifact_path="plots")
        run_id = tr.run_id
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "pretrain-s0"
    assert run.data.params["train.optim.lr"] == "0.0001" and run.data.params["train.epochs"] == "3"
    assert len(run.data.params["note"]) == MAX_PARAM_VAL_LENGTH
    assert run.data.tags["stage"] == "pretrain" and run.data.tags["seed"] == "0"
    hist = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(0, 1.5), (1, 0.5)]
    assert run.data.metrics["acc"] == 0.25
    # artefacts live beside the DB, in tmp_path/mlruns, nowhere else
    root = _local(run.info.artifact_uri)
    assert root.is_relative_to(tmp_path / "mlruns")
    assert (root / "report.csv").read_text() == "a,b\n1,2\n" and (root / "plots" / "curve.txt").is_file()
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["plots", "report.csv"]


def test_failed_run_and_nested_children(mlflow_uri):
    with pytest.raises(ValueError):
        with Tracker(run_name="boom") as tr:
            raise ValueError("x")
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert client.get_run(tr.run_id).info.status == "FAILED"
    with Tracker(run_name="study") as parent:
        for s in range(2):
            with Tracker(run_name=f"seed{s}", params={"seed": s}, parent_run_id=parent.run_id) as child:
                child.log_metrics({"f1": 0.5 + s}, step=0)
    kids = client.search_runs([client.get_experiment_by_name("usclf").experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'")
    assert sorted(r.data.params["seed"] for r in kids) == ["0", "1"]
    # a child whose stage names another experiment still nests: it follows its parent's experiment
    with Tracker(experiment="usclf-finetune", run_name="other", parent_run_id=parent.run_id) as stray:
        pass
    assert client.get_run(stray.run_id).info.experiment_id == client.get_run(parent.run_id).info.experiment_id


def test_disabled_tracker_writes_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'sub' / 'mlflow.db'}"
    with Tracker(uri=uri, enabled=False, params={"a": 1}) as tr:
        tr.log_metrics({"loss": 1.0}, step=0)
        tr.log_params({"b": 2})
        tr.set_tags({"c": 3})
        tr.log_artifact(tmp_path / "missing.txt")
        assert tr.run_id is None
    assert not (tmp_path / "sub").exists()


def test_default_uri_and_misuse(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert default_tracking_uri() == "http://tracking.example:5000"
    with pytest.raises(UsclfError, match="before its run was started"):
        Tracker(uri="sqlite:///unused.db").log_metrics({"a": 1.0})
    assert flatten_params({"a": {"b": [1, 2]}, "c": None}) == {"a.b": "[1, 2]", "c": "None"}
    # a study's per-strategy mapping has keys MLflow refuses ('+'): they are made loggable, not a crash
    assert flatten_params({"f": {"semisup-dc:fixmatch+ema": [0.1]}}) == {"f.semisup-dc:fixmatch_ema": "[0.1]"}
    assert mlflow_key("mean_f1/a+b-f0.1") == "mean_f1/a_b-f0.1"


def test_trainer_logs_per_step_and_per_epoch(mlflow_uri, tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    data = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(4)]

    def step(m, batch, ctx):
        x, y = batch
        loss = ((m(x) - y) ** 2).mean()
        return loss, {"abs": (m(x) - y).abs().mean()}
    cfg = TrainConfig(epochs=2, log_every=2, progress=False, device="cpu", optim=OptimConfig(lr=0.1))
    with Tracker(run_name="train") as tr:
        res = Trainer(model, cfg, step, tmp_path / "out", tracker=tr,
                      on_epoch_end=lambda e, m: {"val/f1": 0.1 * e}).fit(data)
    client = MlflowClient(tracking_uri=mlflow_uri)
    steps = client.get_metric_history(tr.run_id, "step/loss")
    assert sorted(m.step for m in steps) == [2, 4, 6, 8]
    epoch_loss = sorted(client.get_metric_history(tr.run_id, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in epoch_loss] == [0, 1]
    assert [m.value for m in epoch_loss] == pytest.approx([h["train/loss"] for h in res.history])
    assert client.get_run(tr.run_id).data.metrics["val/f1"] == pytest.approx(0.1)
