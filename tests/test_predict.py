"""`usclf predict` on a real folder mixing simulated exams, DICOM (multi-frame), PNG, JPEG, colour Doppler and
broken files: rows and reasons, equality with evaluate-style inference on the ingested cache, resume after a
real kill, CSV / Parquet / JSON Lines, the CLI."""
from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import set_pixel_data
from pydicom.uid import ExplicitVRLittleEndian

from conftest import calibrated
from usclf.cli import main
from usclf.data.cache import open_dataset
from usclf.data.ingest import IngestConfig, ingest
from usclf.data.simulate import SimulateConfig, simulate
from usclf.data.transforms import AugmentConfig
from usclf.errors import UsclfError
from usclf.eval.inference import infer
from usclf.models.heads import build_classifier
from usclf.models.modelfile import ModelInfo, Preprocess, save_model_file
from usclf.predict.run import predict
from usclf.stages.common import preprocess_meta
from usclf.stages.scoring import class_scores

SALT = "predict-test-salt"
SECRETS = [b"PAT-SECRET-9", b"Doe^Jane", b"1.2.826.0.1.3680043.77.1"]
US_MF, CT = "1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.5.1.4.1.1.2"


def _sector(level: int, seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, 2), (44, 44), 0, 50, 130, 1, -1)
    img = (mask * np.clip(rng.normal(level, 25, (h, w)), 20, 255)).astype(np.uint8)
    cv2.putText(img, "PAT", (1, 8), cv2.FONT_HERSHEY_PLAIN, 0.5, 255, 1)
    return img


def _dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2", modality: str = "US",
           sop: str = US_MF) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.77.2"
    ds.Modality, ds.PatientID, ds.PatientName = modality, "PAT-SECRET-9", "Doe^Jane"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.77.1"
    set_pixel_data(ds, arr, photometric, 8)
    ds.save_as(path, enforce_file_format=True)


def _odd_exam(d: Path) -> None:
    """Every kind of file predict must handle, in one exam folder (+ a sub-folder)."""
    (d / "sub").mkdir(parents=True)
    _dicom(d / "cine.dcm", np.stack([_sector(v, v) for v in (70, 120, 170)]))
    _dicom(d / "ct.dcm", _sector(100, 1), modality="CT", sop=CT)
    cv2.imwrite(str(d / "still.png"), _sector(130, 2))
    cv2.imwrite(str(d / "still.jpg"), _sector(150, 3))
    cv2.imwrite(str(d / "sub" / "deep.png"), _sector(90, 4))
    rgb = np.dstack([_sector(100, 5)] * 3)
    rgb[20:34, 24:44] = (230, 20, 20)                      # a red flow blob
    cv2.imwrite(str(d / "doppler.png"), rgb[:, :, ::-1])
    data = (d / "still.png").read_bytes()
    (d / "cut.png").write_bytes(data[: len(data) // 2])
    (d / "zero.png").write_bytes(b"")
    (d / "notes.txt").write_text("Doe^Jane liver ok\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _world(tmp_path_factory)


def _world(tmp_path_factory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("predict")
    raw = tmp / "raw"
    simulate(raw, SimulateConfig(exams=5, size=48, format="mixed", seed=3, doppler_rate=0.1), progress=False)
    labels = pd.read_csv(raw / "labels.csv")
    (raw / "labels.csv").unlink()
    _odd_exam(raw / "zz_mixed")
    (raw / "zz_empty").mkdir()
    ingest(raw, tmp / "ds", None, IngestConfig(size=36, salt=SALT), progress=False)
    ds = open_dataset(tmp / "ds")
    pre = preprocess_meta(ds, AugmentConfig(size=32))          # what finetune/pretrain store: 36 px -> 32 px
    torch.manual_seed(0)
    ml = calibrated(build_classifier("resnet18", "multilabel", num_classes=len(ds.classes)), ds.images)
    rows = np.arange(len(ds.manifest))
    ref_ml = class_scores("multilabel", infer(ml, ds, rows, AugmentConfig(size=32))["out"])
    th = np.median(ref_ml, axis=0)                             # about half the frames positive per class
    save_model_file(tmp / "ml.pt", ml, ModelInfo(ds.classes, "finetune", preprocess=pre, thresholds=th.tolist()))
    cl = calibrated(build_classifier("resnet18", "cluster", num_clusters=5), ds.images)
    V = np.random.default_rng(0).random((5, len(ds.classes)))
    save_model_file(tmp / "cl.pt", cl, ModelInfo(ds.classes, "pretrain", preprocess=pre,
                                                 thresholds=[0.5] * len(ds.classes), matching=V.tolist()))
    ref_cl = class_scores("cluster", infer(cl, ds, rows, AugmentConfig(size=32))["out"], V)
    man = ds.manifest.assign(key=list(zip(ds.manifest["path"], ds.manifest["frame"].astype(int))))
    ref = predict(tmp / "ml.pt", raw, tmp / "ref" / "p.csv", batch_size=16, progress=False, salt=SALT)
    return SimpleNamespace(tmp=tmp, raw=raw, ds=ds, man=man, th=th, V=V, ref_ml=ref_ml, ref_cl=ref_cl,
                           ref=ref, patient_ids=labels["patient_id"].astype(str).unique().tolist())


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".json", ".jsonl"):
        return pd.read_json(path, lines=True, dtype={"exam_id": str, "reason": str})
    return pd.read_csv(path, dtype={"exam_id": str, "path": str}, keep_default_na=False, na_values=[""])


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same rows in the same order; scores equal up to batch-composition float noise."""
    assert len(a) == len(b)
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    for c in a.columns:
        if c.startswith("p_"):
            np.testing.assert_allclose(a[c].astype(float), b[c].astype(float), atol=1e-5, equal_nan=True)
        else:
            assert [None if pd.isna(v) or v == "" else str(v) for v in a[c]] == \
                   [None if pd.isna(v) or v == "" else str(v) for v in b[c]], c


def test_rows_reasons_and_scores_match_ingest_and_evaluate(world):
    df = _read(world.ref.out)
    classes = world.ds.classes
    pred = df[df.status == "predicted"]
    # every B-mode frame ingest keeps is predicted, nothing else, once
    keys = list(zip(pred["path"], pred["frame"].astype(int)))
    assert sorted(keys) == sorted(world.man["key"]) and len(set(keys)) == len(keys)
    assert world.ref.n_predicted == len(world.man) and (pred["reason"].isna()).all()
    # same scores as evaluate-style inference on the ingested cache; thresholds applied per class
    order = [world.man.index[world.man["key"] == k][0] for k in keys]
    np.testing.assert_allclose(pred[[f"p_{c}" for c in classes]].to_numpy(), world.ref_ml[order], atol=1e-4)
    assert (pred[classes].to_numpy() == (pred[[f"p_{c}" for c in classes]].to_numpy() >= world.th)).all()
    assert 0 < pred[classes].to_numpy().mean() < 1
    # exam ids hashed exactly like ingest (same salt)
    assert pred["exam_id"].tolist() == world.man.loc[order, "exam_id"].tolist()
    # every other file / frame has its reason
    skip = df[df.status == "skipped"].set_index("path")["reason"]
    want = {"zz_mixed/doppler.png": "colour Doppler", "zz_mixed/cut.png": "truncated PNG",
            "zz_mixed/zero.png": "empty file", "zz_mixed/notes.txt": "not an image",
            "zz_mixed/ct.dcm": "not ultrasound (Modality CT)", "zz_empty/": "empty exam folder"}
    for path, reason in want.items():
        assert reason in skip[path], (path, skip[path])
    files = {p.relative_to(world.raw).as_posix() for p in world.raw.rglob("*") if p.is_file()}
    assert set(df["path"]) == files | {"zz_empty/"}
    assert skip.notna().all() and set(df.status) == {"predicted", "skipped"}
    assert sorted(df.loc[df.path == "zz_mixed/cine.dcm", "frame"].astype(int)) == [0, 1, 2]
    # no patient id, name or study UID in clear anywhere in what predict wrote
    for f in [world.ref.out, world.ref.exams, *world.ref.out.with_name("p.csv.parts").iterdir()]:
        data = f.read_bytes()
        assert not any(s in data for s in SECRETS + [p.encode() for p in world.patient_ids]), f


def test_exam_inventory_counts_predicted_frames_per_class(world):
    df, inv = _read(world.ref.out), _read(world.ref.exams)
    classes = world.ds.classes
    pred = df[df.status == "predicted"]
    assert set(inv["exam_id"]) == set(df["exam_id"])
    inv = inv.set_index("exam_id")
    for eid, g in pred.groupby("exam_id"):
        assert inv.loc[eid, "n_frames"] == len(g)
        for c in classes:
            assert inv.loc[eid, f"n_{c}"] == g[c].sum()
            assert inv.loc[eid, c] == int(g[c].sum() > 0)
    assert (inv["n_skipped"] == df[df.status == "skipped"].groupby("exam_id").size()
            .reindex(inv.index, fill_value=0)).all()


def test_clustering_model_scores_are_matched_cluster_label_mixes(world):
    res = predict(world.tmp / "cl.pt", world.raw, world.tmp / "cl" / "p.parquet", progress=False, salt=SALT)
    pred = _read(res.out).query("status == 'predicted'")
    keys = list(zip(pred["path"], pred["frame"].astype(int)))
    order = [world.man.index[world.man["key"] == k][0] for k in keys]
    s = pred[[f"p_{c}" for c in world.ds.classes]].to_numpy()
    np.testing.assert_allclose(s, world.ref_cl[order], atol=1e-6)
    rows = {tuple(np.round(r, 6)) for r in s}
    assert rows <= {tuple(np.round(r, 6)) for r in world.V} and len(rows) > 1


def test_two_head_model_predicts_with_its_sigmoid_head(world, tmp_path):
    ds = world.ds
    m = calibrated(build_classifier("resnet18", "twohead", num_combos=4, num_classes=len(ds.classes)), ds.images)
    save_model_file(tmp_path / "two.pt", m, ModelInfo(ds.classes, "semisup", thresholds=[0.5] * len(ds.classes),
                                                      preprocess=preprocess_meta(ds, AugmentConfig(size=32))))
    res = predict(tmp_path / "two.pt", world.raw, tmp_path / "p.jsonl", progress=False, salt=SALT)
    pred = _read(res.out).query("status == 'predicted'")
    order = [world.man.index[world.man["key"] == k][0] for k in zip(pred["path"], pred["frame"].astype(int))]
    ref = class_scores("twohead", infer(m, ds, np.arange(len(ds.manifest)), AugmentConfig(size=32))["out"])
    np.testing.assert_allclose(pred[[f"p_{c}" for c in ds.classes]].to_numpy(), ref[order], atol=1e-4)


def _predict_then_hang(model, raw, out, recorded) -> None:
    def hold(unit, n):
        recorded.set()
        time.sleep(300)
    predict(model, raw, out, batch_size=4, progress=False, salt=SALT, on_unit=hold)


def test_killed_run_resumes_without_duplicates_csv(world):
    out = world.tmp / "kill" / "p.csv"
    # A real SIGKILL of a forked process (no re-import of torch, unlike a fresh interpreter) once the first
    # exam folder is recorded: no cleanup code of predict runs.
    ctx = mp.get_context("fork")
    recorded = ctx.Event()
    proc = ctx.Process(target=_predict_then_hang, args=(world.tmp / "ml.pt", world.raw, out, recorded))
    proc.start()
    try:
        assert recorded.wait(120), "the forked predict never recorded a folder"
    finally:
        proc.kill()
        proc.join()
    assert proc.exitcode == -signal.SIGKILL
    log = (out.with_name("p.csv.parts") / "progress.jsonl").read_text().splitlines()
    assert [json.loads(x)["unit"] for x in log] == ["exam_00000"]
    first = _read(out)
    assert 0 < len(first) < len(_read(world.ref.out))
    # what a kill in the middle of the next folder leaves: half a row, half a progress line
    with open(out, "a") as fh:
        fh.write("e_0123456789ab,exam_00001/IMG_0001.jpg,0,0.51")
    with open(out.with_name("p.csv.parts") / "progress.jsonl", "a") as fh:
        fh.write('{"unit": "exam_00001", "ro')
    res = predict(world.tmp / "ml.pt", world.raw, out, batch_size=16, progress=False, salt=SALT)
    assert res.n_units_done == 1 and res.n_units == world.ref.n_units
    _same(_read(out), _read(world.ref.out))
    _same(_read(res.exams), _read(world.ref.exams))
    again = predict(world.tmp / "ml.pt", world.raw, out, progress=False, salt=SALT)   # nothing left to do
    assert again.n_rows == 0 and again.n_units_done == again.n_units
    _same(_read(out), _read(world.ref.out))


class _Stop(Exception):
    pass


@pytest.mark.parametrize("ext", [".parquet", ".json"])
def test_interrupted_parquet_and_json_resume(world, ext):
    out = world.tmp / f"int{ext}" / f"p{ext}"
    seen = []

    def stop(unit, n):
        seen.append(unit)
        if len(seen) == 2:
            raise _Stop

    with pytest.raises(_Stop):
        predict(world.tmp / "ml.pt", world.raw, out, batch_size=4, progress=False, salt=SALT, on_unit=stop)
    parts = out.with_name(out.name + ".parts")
    if ext == ".parquet":
        assert not out.exists() and len(list(parts.glob("*.parquet"))) == 2
        (parts / "0000002.parquet.tmp").write_bytes(b"PAR1 half a part")
    else:
        with open(out, "a") as fh:
            fh.write('{"exam_id": "e_0123456789ab", "path": "exam_0')
    res = predict(world.tmp / "ml.pt", world.raw, out, batch_size=16, progress=False, salt=SALT)
    assert res.n_units_done == 2
    _same(_read(out), _read(world.ref.out))
    _same(_read(res.exams), _read(world.ref.exams))
    if ext == ".json":  # JSON Lines: every line one object
        assert all(json.loads(line)["status"] in ("predicted", "skipped") for line in out.open())


def test_cli_end_to_end_and_one_line_errors(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("USCLF_PATIENT_SALT", SALT)
    out = tmp_path / "cli" / "preds.csv"
    args = ["predict", "--model", str(world.tmp / "ml.pt"), "--input", str(world.raw), "--out", str(out),
            "--batch-size", "32", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    _same(_read(out), _read(world.ref.out))
    assert "preds_exams.csv" in capsys.readouterr().out
    state = "".join(f.read_text() for f in (out.parent / "preds.csv.parts").iterdir() if f.suffix in (".json", ".jsonl"))
    assert str(world.raw) not in state and world.raw.name not in state  # folder names may name patients
    assert main(args) == 0                                   # rerun: already complete, no duplicates
    _same(_read(out), _read(world.ref.out))
    (tmp_path / "empty").mkdir()
    bad = {"empty": ["--input", str(tmp_path / "empty")],
           "model": ["--model", str(world.raw / "zz_mixed" / "notes.txt"), "--out", str(tmp_path / "x.csv")],
           "format": ["--out", str(tmp_path / "x.xlsx")]}
    for what, override in bad.items():
        argv = list(args)
        for i in range(0, len(override), 2):
            argv[argv.index(override[i]) + 1] = override[i + 1]
        assert main(argv) == 2, what
        err = capsys.readouterr().err.strip()
        assert err.startswith("usclf predict: error:") and "\n" not in err and "Traceback" not in err, err


def test_models_without_what_predict_needs_are_refused(world, tmp_path):
    classes = world.ds.classes
    m = build_classifier("resnet18", "multilabel", num_classes=len(classes))
    pre = Preprocess({"size": 36}, input_size=32)
    save_model_file(tmp_path / "noth.pt", m, ModelInfo(classes, preprocess=pre))
    with pytest.raises(UsclfError, match="no per-class thresholds"):
        predict(tmp_path / "noth.pt", world.raw, tmp_path / "a.csv", progress=False)
    c = build_classifier("resnet18", "cluster", num_clusters=5)
    save_model_file(tmp_path / "nomatch.pt", c, ModelInfo(classes, preprocess=pre, thresholds=[0.5] * len(classes)))
    with pytest.raises(UsclfError, match="matching"):
        predict(tmp_path / "nomatch.pt", world.raw, tmp_path / "b.csv", progress=False)
    # resuming an output with another model would mix two models' rows
    with pytest.raises(UsclfError, match="another model"):
        predict(world.tmp / "cl.pt", world.raw, world.ref.out, progress=False, salt=SALT)
    # an output that predict did not start is never appended to
    (tmp_path / "theirs.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UsclfError, match="no resume state"):
        predict(world.tmp / "ml.pt", world.raw, tmp_path / "theirs.csv", progress=False)
    assert (tmp_path / "theirs.csv").read_text() == "a,b\n1,2\n"


@pytest.mark.slow
def test_decoding_in_worker_processes_gives_the_same_rows(world, tmp_path):
    # output inside the input folder: predict must not read its own files (nor report their folder)
    out = world.raw / "preds" / "p.csv"
    try:
        res = predict(world.tmp / "ml.pt", world.raw, out, batch_size=8, progress=False, salt=SALT, workers=2)
        _same(_read(out), _read(world.ref.out))
        again = predict(world.tmp / "ml.pt", world.raw, out, progress=False, salt=SALT)
        assert again.n_rows == 0 and again.n_units == res.n_units
    finally:
        shutil.rmtree(world.raw / "preds")
