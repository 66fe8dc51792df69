"""End-to-end `usclf pretrain` / `usclf evaluate` through the CLI: outputs, MLflow content, kill + --resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import simulated_dataset
from usclf.cli import main
from usclf.models.modelfile import load_model_file

TINY = ["data.exams_per_batch=2", "data.max_images_per_exam=4", "augment.size=32", "train.log_every=1",
        "train.progress=false"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return simulated_dataset(tmp_path_factory.mktemp("pre"), 16, seed=5, fractions=(0.5, 0.2, 0.15, 0.15))


@pytest.mark.parametrize("method", ["pica", "lsd"])
def test_pretrain_then_evaluate_cli(dataset, tmp_path, mlflow_uri, method):
    out = tmp_path / "pre"
    assert main(["pretrain", "--config", "configs/pretrain_lsd_demo.yaml", "--method", method, "--data",
                 str(dataset), "--out", str(out), "--quiet", "train.epochs=2", *TINY]) == 0
    model, meta = load_model_file(out / "model.pt")
    assert meta.method == method and meta.stage == "pretrain" and model.head.kind == "cluster"
    assert model.head.num_clusters == len(meta.vocab) > 1  # K defaults to the label-combination vocabulary
    assert (out / "eval" / "report.csv").is_file() and (out / "eval" / "gallery" / "gallery.html").is_file()

    client = MlflowClient(mlflow_uri)
    run = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
           if r.data.tags.get("stage") == "pretrain"][0]
    p = run.data.params
    assert p["method"] == method and float(p["lambda"]) == 2.0 and int(p["K"]) == model.head.num_clusters
    assert p["seed"] == "0" and len(p["data_hash"]) == 12
    # LSD's alpha = 1 + epsilon; PICA has no epsilon option, so it logs no alpha (and its model file no epsilon)
    assert float(p["alpha"]) == pytest.approx(1.01) if method == "lsd" else "alpha" not in p
    assert meta.provenance["lambda"] == 2.0 and meta.provenance.get("epsilon") == (0.01 if method == "lsd" else None)
    hist = {m.step for m in client.get_metric_history(run.info.run_id, "train/ce")}
    assert hist == {0, 1}  # one value per epoch
    assert client.get_metric_history(run.info.run_id, "train/size_entropy")
    assert client.get_metric_history(run.info.run_id, "train/" + ("ne" if method == "pica" else "sd"))
    assert "test/nmi" in run.data.metrics and "test/weighted_f1" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "evaluation", "config.yaml"} <= arts

    ev = tmp_path / "ev"  # a model saved by pretrain is loaded by `usclf evaluate`
    assert main(["evaluate", "--model", str(out / "model.pt"), "--data", str(dataset), "--out", str(ev),
                 "--quiet", "figures=false"]) == 0
    _, meta2 = load_model_file(ev / "model.pt")
    assert len(meta2.thresholds) == 7 and len(meta2.matching) == model.head.num_clusters


def _run(args, env, wait=True):
    cmd = [sys.executable, "-m", "usclf.cli", *args]
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_kill_and_resume_gives_same_weights(dataset, tmp_path, mlflow_uri):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "OMP_NUM_THREADS": "1"}
    common = ["pretrain", "--config", "configs/pretrain_lsd_demo.yaml", "--data", str(dataset), "--quiet",
              "train.epochs=3", "train.ckpt_every=1", "evaluate_after=false", *TINY]
    ref = tmp_path / "ref"
    r = _run([*common, "--out", str(ref)], env)
    assert r.returncode == 0, r.stderr

    out = tmp_path / "killed"
    proc = _run([*common, "--out", str(out)], env, wait=False)
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # a few more steps, so the kill lands mid-epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists(), "the run finished before it could be killed"
    assert last.exists()
    r = _run([*common, "--out", str(out), "--resume"], env)
    assert r.returncode == 0, r.stderr
    a = torch.load(ref / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_of_a_run_written_before_lam_and_epsilon_became_options(dataset, tmp_path, mlflow_uri):
    """A run folder of the earlier version (top-level `lam`/`epsilon` in config.yaml, no method state in the
    checkpoint) resumes: the moved keys are read at their new place, PICA's unused epsilon is dropped."""
    import yaml
    out = tmp_path / "old"
    common = ["pretrain", "--method", "pica", "--data", str(dataset), "--out", str(out), "--quiet",
              "evaluate_after=false", *TINY]
    assert main([*common, "train.epochs=1"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg.update(lam=cfg.pop("options")["lam"], epsilon=0.01)  # as the earlier version wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    last = out / "checkpoints" / "last.pt"
    ck = torch.load(last, map_location="cpu", weights_only=False)
    torch.save({**ck, "method": None}, last)  # the earlier pretrain step (a bound method) saved no state
    assert main([*common, "--resume", "train.epochs=2"]) == 0
    _, meta = load_model_file(out / "model.pt")
    assert meta.provenance["epochs"] == 2 and meta.provenance["lambda"] == 2.0
    assert main([*common, "--resume", "train.epochs=3", "options.lam=5"]) == 2  # a changed lambda is still refused
