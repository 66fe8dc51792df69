"""`usclf export` through the real CLI on simulated exams: ONNX / TorchScript graphs give `usclf predict`'s scores
and labels on the cache images of the same files (checked here with onnxruntime / torch.jit directly, not by the
exporter's own check), the MLflow pyfunc takes raw frames, the registry alias follows validation F1."""
from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import calibrated
from usclf.cli import main
from usclf.data.cache import open_dataset
from usclf.data.ingest import IngestConfig, ingest
from usclf.data.simulate import SimulateConfig, simulate
from usclf.data.transforms import AugmentConfig
from usclf.deploy.export import prepare_pixels
from usclf.eval.inference import infer
from usclf.models.heads import build_classifier
from usclf.models.modelfile import ModelInfo, save_model_file
from usclf.predict.run import predict
from usclf.stages.common import preprocess_meta
from usclf.stages.scoring import class_scores

SALT = "export-test-salt"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("export")
    raw = tmp / "raw"
    simulate(raw, SimulateConfig(exams=3, size=48, seed=5, doppler_rate=0.0), progress=False)
    (raw / "labels.csv").unlink()
    ingest(raw, tmp / "ds", None, IngestConfig(size=36, salt=SALT), progress=False)  # 36 px cache -> 32 px input
    ds = open_dataset(tmp / "ds")
    pre, rows, c = preprocess_meta(ds, AugmentConfig(size=32)), np.arange(len(ds.manifest)), len(ds.classes)
    torch.manual_seed(0)
    models = {}
    for name, head, sizes, f1 in (("ml", "multilabel", {"num_classes": c}, 0.6),
                                  ("two", "twohead", {"num_classes": c, "num_combos": 4}, 0.7),
                                  ("cl", "cluster", {"num_clusters": 5}, None)):
        m = calibrated(build_classifier("resnet18", head, **sizes), ds.images)
        out = infer(m, ds, rows, AugmentConfig(size=32))["out"]
        v = np.random.default_rng(1).random((5, c)) if head == "cluster" else None
        th = np.median(class_scores(head, out, v), axis=0)           # about half the frames positive per class
        prov = {} if f1 is None else {"best_val_f1": f1}
        models[name] = save_model_file(tmp / f"{name}.pt", m, ModelInfo(
            ds.classes, "finetune", head, preprocess=pre, thresholds=th.tolist(),
            matching=[] if v is None else v.tolist(), provenance=prov))
    preds = {k: pd.read_csv(predict(p, raw, tmp / f"pred_{k}" / "p.csv", progress=False, salt=SALT).out)
             .query("status == 'predicted'") for k, p in models.items()}
    key = dict(zip(zip(ds.manifest["path"], ds.manifest["frame"].astype(int)), ds.manifest["cache_row"]))
    return SimpleNamespace(tmp=tmp, raw=raw, ds=ds, models=models, preds=preds, key=key)


def _rows_and_pixels(world, kind):
    """predict's rows for model `kind` and the exported graph's input for the same frames (from the cache)."""
    p = world.preds[kind]
    cache = [world.key[(a, int(b))] for a, b in zip(p["path"], p["frame"])]
    return p, prepare_pixels(world.ds.images[cache], 32)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_graph_gives_predict_scores_and_labels(world, fmt, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    for kind, path in world.models.items():
        out = tmp_path / f"{kind}.{'onnx' if fmt == 'onnx' else 'pt'}"
        assert main(["export", "--model", str(path), "--format", fmt, "--out", str(out),
                     "--data", str(world.tmp / "ds"), "--quiet"]) == 0
        assert "max |score difference|" in capsys.readouterr().out
        p, pixels = _rows_and_pixels(world, kind)
        if fmt == "onnx":
            sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            run = lambda x: sess.run(None, {"pixels": x})  # noqa: E731
            meta = json.loads({e.key: e.value for e in onnx.load(str(out)).metadata_props}["usclf"])
        else:
            files = {"usclf.json": ""}
            ts = torch.jit.load(str(out), _extra_files=files)
            run = lambda x: [t.numpy() for t in ts(torch.from_numpy(x))]  # noqa: E731
            meta = json.loads(files["usclf.json"])
        scores, labels = run(pixels)
        one, _ = run(pixels[:1])                                        # dynamic batch: one image works too
        cls = world.ds.classes
        np.testing.assert_allclose(scores, p[[f"p_{c}" for c in cls]].to_numpy(), atol=1e-4, err_msg=kind)
        np.testing.assert_allclose(one[0], scores[0], atol=1e-5)
        near = np.abs(scores - np.asarray(meta["thresholds"])) < 1e-5  # float32 vs float64 at the threshold
        assert ((labels == p[cls].to_numpy()) | near).all(), kind
        assert meta["classes"] == cls and meta["input_size"] == 32 and meta["ingest"]["size"] == 36


def test_mlflow_pyfunc_scores_raw_frames_like_predict(world, tmp_path, capsys):
    import mlflow.pyfunc

    out = tmp_path / "ml_mlflow"
    assert main(["export", "--model", str(world.models["ml"]), "--format", "mlflow", "--out", str(out),
                 "--quiet"]) == 0
    assert "8 seeded random frames" in capsys.readouterr().out
    assert not [f for f in out.rglob("*") if f.suffix in (".pkl", ".pickle")]  # models from code: no pickles
    p = world.preds["ml"].query("frame == 0").head(6)
    frames = np.stack([cv2.imread(str(world.raw / r), cv2.IMREAD_GRAYSCALE) for r in p["path"]])
    blank = np.zeros_like(frames[0])                                  # no scan region: skipped with a reason
    df = mlflow.pyfunc.load_model(str(out)).predict(np.concatenate([frames, blank[None]]))
    cls = world.ds.classes
    np.testing.assert_allclose(df[[f"p_{c}" for c in cls]].to_numpy()[:-1], p[[f"p_{c}" for c in cls]].to_numpy(),
                               atol=1e-6)
    assert (df[cls].to_numpy()[:-1] == p[cls].to_numpy()).all()
    assert df["status"].tolist() == ["predicted"] * len(p) + ["skipped"] and "blank" in df["reason"].iloc[-1]


def test_register_moves_champion_by_validation_f1(world, tmp_path, mlflow_uri, capsys):
    import mlflow.pyfunc
    from mlflow import MlflowClient

    def reg(kind, i):
        assert main(["export", "--model", str(world.models[kind]), "--format", "mlflow", "--out",
                     str(tmp_path / f"m{i}"), "--register", "organs", "--tracking-uri", mlflow_uri, "--quiet"]) == 0
        return capsys.readouterr().out

    client = MlflowClient(mlflow_uri)
    assert "now the champion" in reg("ml", 1)            # val F1 0.6, first version
    assert "now the champion" in reg("two", 2)           # 0.7 beats 0.6
    assert "champion stays version 2" in reg("ml", 3)    # 0.6 again: registered, not promoted
    assert "champion stays version 2" in reg("cl", 4)    # no validation F1 recorded: never promoted
    assert str(client.get_model_version_by_alias("organs", "champion").version) == "2"
    mlflow.set_tracking_uri(mlflow_uri)
    frames = world.ds.images[:3]
    df = mlflow.pyfunc.load_model("models:/organs@champion").predict(np.asarray(frames), params={"prepared": True})
    assert len(df) == 3 and (df["status"] == "predicted").all()


def test_export_refuses_bad_requests_in_one_line(world, tmp_path, capsys):
    ml = str(world.models["ml"])
    cases = [(["--format", "onnx", "--out", str(tmp_path / "a.onnx"), "--register", "x"], "--format mlflow"),
             (["--format", "onnx", "--out", str(tmp_path / "b.onnx"), "--tol", "1e-12"], "nothing written"),
             (["--format", "torchscript", "--out", str(world.models["two"])], "exists"),
             (["--format", "onnx", "--out", str(tmp_path / "no" / "c.onnx")], "not found")]
    for extra, msg in cases:
        assert main(["export", "--model", ml, "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*tmp"))
    save_model_file(tmp_path / "noth.pt", *_untrained(world))
    assert main(["export", "--model", str(tmp_path / "noth.pt"), "--format", "onnx", "--out",
                 str(tmp_path / "d.onnx")]) == 2
    assert "thresholds" in capsys.readouterr().err


def _untrained(world):
    m = build_classifier("resnet18", "multilabel", num_classes=len(world.ds.classes))
    return m, ModelInfo(world.ds.classes, preprocess=preprocess_meta(world.ds, AugmentConfig(size=32)))
