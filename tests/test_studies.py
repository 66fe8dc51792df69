"""Tiny-scale study pipelines: one MLflow parent, the expected nested children with their params, files."""
from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import simulated_dataset
from usclf.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    return importlib.import_module(f"usclf.studies.{name}")


TINY = ["data.exams_per_batch=2", "data.max_images_per_exam=4", "augment.size=32", "data.batch_size=8"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return simulated_dataset(tmp_path_factory.mktemp("study"), 14, seed=2, fractions=(0.4, 0.3, 0.15, 0.15))


def _runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def assert_curve_structure(client, parent, children, strategies: dict, fractions: list, df: pd.DataFrame,
                           split_seeds=("0",)) -> None:
    """What the MLflow UI needs for label-fraction curves: every child nested under `parent` in its experiment,
    tagged strategy / init / label_fraction / seed / split_seed with a numeric metric `label_fraction`; the parent's metric
    test_f1/<strategy> is the mean test F1 per label percentage (its step), and the table and figure are there."""
    assert {c.info.experiment_id for c in children} == {parent.info.experiment_id}
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    seen = set()
    for c in children:
        t = c.data.tags
        assert t["init"] == strategies[t["strategy"]] and t["split_seed"] in split_seeds and t["seed"] == "0"
        assert c.data.metrics["label_fraction"] == pytest.approx(float(t["label_fraction"]))
        seen.add((t["strategy"], float(t["label_fraction"])))
    assert seen == {(s, f) for s in strategies for f in fractions}
    for s in strategies:
        hist = client.get_metric_history(parent.info.run_id, f"test_f1/{s}")
        want = df[df["method"] == s].groupby("label_fraction")["f1"].mean()
        assert sorted((m.step, round(m.value, 6)) for m in hist) == \
            sorted((round(f * 100), round(v, 6)) for f, v in want.items())


def test_lambda_sensitivity_structure(dataset, tmp_path, mlflow_uri):
    mod = _load("lambda_sensitivity")
    cfg = mod.LambdaStudyConfig(data=str(dataset), out=str(tmp_path / "lam"), lambdas=[0.5, 2.0], seeds=[0],
                                pretrain_config="configs/pretrain_lsd_demo.yaml",
                                stage_overrides=["train.epochs=1", *TINY, "evaluate_after=true"])
    df = mod.run(cfg, mlflow_uri, progress=False)
    assert len(df) == 4 and set(df["method"]) == {"pica", "lsd"}
    client, parents, children = _runs(mlflow_uri, "lambda_sensitivity")
    assert len(parents) == 1 and len(children) == 4
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    got = {(c.data.params["method"], float(c.data.params["lambda"]), c.data.params["seed"]) for c in children}
    assert got == {(m, lam, "0") for m in ("pica", "lsd") for lam in (0.5, 2.0)}
    arts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"results.csv", "summary.csv", "lambda_sensitivity.png"} <= arts
    assert (tmp_path / "lam" / "lambda_sensitivity.png").stat().st_size > 5000
    summary = pd.read_csv(tmp_path / "lam" / "summary.csv")
    assert len(summary) == 4 and {"mean", "ci95_low", "ci95_high"} <= set(summary.columns)


@pytest.mark.slow
def test_label_fraction_study_structure(dataset, tmp_path, mlflow_uri):
    pre = tmp_path / "lsd"
    assert main(["pretrain", "--config", "configs/pretrain_lsd_demo.yaml", "--data", str(dataset), "--out",
                 str(pre), "--quiet", "train.epochs=1", "evaluate_after=false", *TINY]) == 0
    mod = _load("label_fraction_study")
    cfg = mod.LabelFractionStudyConfig(
        data=str(dataset), out=str(tmp_path / "lf"), clustering_model=str(pre / "model.pt"),
        strategies=["supervised-random", "supervised-dc", "semisup-dc"], fractions=[0.5, 1.0], seeds=[0],
        finetune_config="configs/finetune_demo.yaml", semisup_config="configs/semisup_demo.yaml",
        stage_overrides=TINY[1:], finetune_overrides=["train.epochs=1"],  # exams_per_batch is pretrain's only
        semisup_overrides=["train.max_steps=2", "eval_every=1", "mu=2"])
    df = mod.run(cfg, mlflow_uri, progress=False)
    assert len(df) == 6
    client, parents, children = _runs(mlflow_uri, "label_fraction_study")
    assert len(parents) == 1 and len(children) == 6
    got = {(c.data.params["method"], c.data.params["init_kind"], float(c.data.params["label_fraction"]),
            c.data.params["seed"]) for c in children}
    expected = {(m, i, f, "0") for m, i in [("supervised", "random"), ("supervised", "lsd"),
                                             ("fixmatch-twohead", "lsd")] for f in (0.5, 1.0)}
    assert got == expected  # a model-file init is named by its model file's method (lsd), not "checkpoint"
    arts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"results.csv", "summary.csv", "label_fraction_study.png"} <= arts
    assert_curve_structure(client, parents[0], children, {"supervised-random": "random", "supervised-dc": "lsd",
                                                         "semisup-dc": "lsd"}, [0.5, 1.0], df)
    # re-running the study skips finished cells: no new child runs
    mod.run(cfg, mlflow_uri, progress=False)
    _, parents2, children2 = _runs(mlflow_uri, "label_fraction_study")
    assert len(children2) == 6 and len(parents2) == 2


def test_a_study_written_with_the_old_fraction_spelling_resumes(tmp_path):
    """Results and cell folders from before the label fraction was spelled `label_fraction` everywhere: the
    finished cell is skipped, the unfinished one continues in its old folder, the table uses the new name."""
    from usclf.studies.harness import run_study
    out = tmp_path / "study"
    (out / "runs" / "methodsup-fraction0.2-seed0").mkdir(parents=True)
    (out / "results.csv").write_text("method,fraction,seed,f1\nsup,0.1,0,0.5\n")
    calls = []

    def run_cell(cell, cell_out, parent):
        calls.append(cell_out.name)
        return {"f1": 0.7}
    cells = [{"method": "sup", "label_fraction": f, "seed": 0} for f in (0.1, 0.2, 0.5)]
    df = run_study("legacy", out, cells, run_cell, ["method", "label_fraction"], None, {},
                   tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", progress=False)
    assert calls == ["methodsup-fraction0.2-seed0", "methodsup-label_fraction0.5-seed0"]
    assert list(pd.read_csv(out / "results.csv").columns[:3]) == ["method", "label_fraction", "seed"]
    assert df.sort_values("label_fraction")["f1"].tolist() == [0.5, 0.7, 0.7]
