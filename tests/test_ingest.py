"""Ingest end to end on a small export folder of real DICOM / PNG / JPEG files written here."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import set_pixel_data
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from usclf.data.cache import open_dataset
from usclf.data.ingest import IngestConfig, ingest
from usclf.errors import UsclfError

CLASSES = ["liver", "kidney", "other"]
SECRETS = [b"PAT-SECRET-001", b"PAT-SECRET-002", b"PAT-SECRET-003", b"Smith", b"Alice", b"Doe^Bob",
           b"1.2.826.0.1.3680043.99.1", b"the-salt-value"]
STUDY_A = "1.2.826.0.1.3680043.99.1"


def dicom(arr, path, photometric="MONOCHROME2", modality="US", sop="1.2.840.10008.5.1.4.1.1.6.1", **tags):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = modality
    for k, v in tags.items():
        setattr(ds, k, v)
    set_pixel_data(ds, arr, photometric, 8)
    ds.save_as(path, enforce_file_format=True)


def sector(level, seed=0, h=60, w=80):
    """A fan-shaped scan region of mean brightness ~level, burned-in text in the top-left corner."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, 2), (56, 56), 0, 50, 130, 1, -1)
    img = (mask * np.clip(rng.normal(level, 8, (h, w)), 20, 255)).astype(np.uint8)
    cv2.putText(img, "PAT", (1, 8), cv2.FONT_HERSHEY_PLAIN, 0.5, 255, 1)
    return img


def doppler(seed=0):
    rgb = np.dstack([sector(100, seed)] * 3)
    rgb[25:40, 30:50] = (230, 20, 20)          # a red flow blob (12 % of pixels)
    return rgb


@pytest.fixture
def export(tmp_path):
    """13 files over 3 exams (+1 empty exam folder): 10 B-mode frames are readable."""
    root = tmp_path / "export"
    a, b, c = root / "examA", root / "examB", root / "examC"
    for d in (a, b, c / "sub", root / "examD"):
        d.mkdir(parents=True)
    who = dict(PatientID="PAT-SECRET-001", PatientName="Smith^Alice", StudyInstanceUID=STUDY_A,
               Manufacturer="ACME", StudyDate="20210305")
    us_mf = "1.2.840.10008.5.1.4.1.1.3.1"
    dicom(np.stack([sector(v) for v in (60, 120, 180)]), a / "cine.dcm", sop=us_mf, **who)
    dicom(sector(90), a / "IMG0002", **who)                       # no extension
    g = np.dstack([sector(70)] * 3)
    dicom(np.stack([g, doppler(), g]), a / "mixed.dcm", "RGB", sop=us_mf, **who)
    dicom(np.dstack([sector(110)] * 3), b / "sc.dcm", "RGB", modality="OT", sop="1.2.840.10008.5.1.4.1.1.7",
          PatientID="PAT-SECRET-002", PatientName="Doe^Bob", StudyInstanceUID="1.2.3.4.5")
    dicom(sector(100), b / "ct.dcm", modality="CT", sop="1.2.840.10008.5.1.4.1.1.2",
          PatientID="PAT-SECRET-002")
    cv2.imwrite(str(c / "gray.png"), sector(130))
    cv2.imwrite(str(c / "gray3.png"), cv2.cvtColor(sector(140), cv2.COLOR_GRAY2BGR))
    cv2.imwrite(str(c / "doppler.png"), cv2.cvtColor(doppler(1), cv2.COLOR_RGB2BGR))
    data = (c / "gray.png").read_bytes()
    (c / "cut.png").write_bytes(data[: len(data) // 2])
    (c / "zero.png").write_bytes(b"")
    (c / "notes.txt").write_text("Smith^Alice liver ok\n")
    cv2.imwrite(str(c / "sub" / "deep.jpg"), sector(150))
    data = (c / "sub" / "deep.jpg").read_bytes()
    (c / "sub" / "cut.jpg").write_bytes(data[: len(data) // 2])
    return root


def snapshot(path, skip):
    return {p: p.stat().st_mtime_ns for p in path.rglob("*") if skip not in p.parents and p != skip}


def test_mixed_export_keeps_every_bmode_frame(export, tmp_path):
    out = tmp_path / "cache"
    before = snapshot(tmp_path, out)
    cfg = IngestConfig(size=32, classes=CLASSES, salt="the-salt-value")
    res = ingest(export, out, cfg=cfg, progress=False)
    assert snapshot(tmp_path, out) == before                    # nothing written outside out
    assert (res.n_files, res.n_files_kept, res.n_frames_kept, res.n_frames_dropped) == (13, 7, 10, 2)
    ds = open_dataset(out)
    man = ds.manifest
    assert ds.images.shape == (10, 32, 32) and ds.classes == CLASSES
    assert set(man["split"]) == {"unlabeled"} and man[CLASSES].isna().all().all()
    assert sorted(man["path"].unique()) == ["examA/IMG0002", "examA/cine.dcm", "examA/mixed.dcm",
                                            "examB/sc.dcm", "examC/gray.png", "examC/gray3.png",
                                            "examC/sub/deep.jpg"]
    cine = man[man["path"] == "examA/cine.dcm"].sort_values("frame")
    assert list(cine["frame"]) == [0, 1, 2]
    means = [ds.images[r].mean() for r in cine["cache_row"]]
    assert means[0] < means[1] < means[2]                       # frame order survives into the cache
    assert list(man.loc[man["path"] == "examA/mixed.dcm", "frame"]) == [0, 2]
    assert man["image_id"].is_unique
    # exam = StudyInstanceUID for DICOM, else the top-level folder; patient = PatientID, else the exam
    exams = man.groupby("path")["exam_id"].first()
    assert exams["examA/cine.dcm"] == exams["examA/IMG0002"] == exams["examA/mixed.dcm"]
    assert exams["examC/gray.png"] == exams["examC/sub/deep.jpg"] != exams["examA/cine.dcm"]
    assert man.groupby("exam_id")["patient_id"].nunique().max() == 1
    assert man["patient_id"].nunique() == 3 and man["patient_id"].str.match(r"^p_[0-9a-f]{12}$").all()
    assert set(man.loc[man["path"].str.startswith("examA"), "vendor"]) == {"ACME"}
    assert man["study_date"].isna().all()  # privacy: dates are dropped unless ingest.keep_study_date

    rep = pd.read_csv(out / "ingest_report.csv", dtype=str, keep_default_na=False)
    files = rep[rep["frame"] == ""].set_index("path")
    assert files.loc["examB/ct.dcm", "reason"] == "not ultrasound (Modality CT)"
    assert "colour Doppler" in files.loc["examC/doppler.png", "reason"]
    assert "truncated PNG" in files.loc["examC/cut.png", "reason"]
    assert "truncated JPEG" in files.loc["examC/sub/cut.jpg", "reason"]
    assert "empty file" in files.loc["examC/zero.png", "reason"]
    assert "not an image" in files.loc["examC/notes.txt", "reason"]
    assert files.loc["examD/", "reason"] == "empty exam folder"
    assert files.loc["examA/mixed.dcm", ["status", "frames_kept"]].tolist() == ["kept", "2"]
    frame_rows = rep[rep["frame"] != ""]
    assert frame_rows[["path", "frame", "status"]].values.tolist() == [["examA/mixed.dcm", "1", "skipped"]]
    assert "colour Doppler" in frame_rows["reason"].iloc[0]

    meta = json.loads((out / "dataset.json").read_text())
    assert meta["n_images"] == 10 and meta["image_size"] == 32 and meta["salt_source"] == "config"
    for f in out.rglob("*"):                                    # no id, name, UID or salt in clear
        data = f.read_bytes()
        for s in SECRETS:
            assert s not in data, f"{s!r} found in {f.name}"


def test_labels_csv_merge(export, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,frame,liver,kidney,other,patient_id,doppler\n"
                      "examC/gray.png,,1,0,0,PAT-SECRET-001,0\n"
                      "./examA/cine.dcm,1,0,1,0,,0\n"
                      "examC/gray3.png,0,0,0,1,PAT-SECRET-003,0\n"
                      "examC/sub/deep.jpg,,,,,,0\n"
                      "examC/missing.png,,1,0,0,,0\n")
    out = tmp_path / "cache"
    res = ingest(export, out, labels, IngestConfig(size=32, classes=CLASSES, salt="the-salt-value"),
                 progress=False)
    man = open_dataset(out).manifest.set_index(["path", "frame"])
    assert man.loc[("examC/gray.png", 0), CLASSES].tolist() == [1, 0, 0]
    assert man.loc[("examA/cine.dcm", 1), CLASSES].tolist() == [0, 1, 0]
    assert man.loc[("examC/gray3.png", 0), CLASSES].tolist() == [0, 0, 1]
    assert man.loc[("examA/cine.dcm", 0), CLASSES].isna().all()          # other frames stay unlabelled
    assert man.loc[("examC/sub/deep.jpg", 0), CLASSES].isna().all()
    assert res.n_labelled_frames == 3 and res.n_label_rows_unmatched == 1
    # labels-CSV patient ids hash like DICOM PatientIDs, so the same patient joins across sources
    assert man.loc[("examC/gray.png", 0), "patient_id"] == man.loc[("examA/cine.dcm", 0), "patient_id"]
    assert man.loc[("examC/gray3.png", 0), "patient_id"] != man.loc[("examC/sub/deep.jpg", 0), "patient_id"]
    for f in out.rglob("*"):
        assert b"PAT-SECRET-003" not in f.read_bytes()


@pytest.mark.parametrize("csv, expected", [
    ("path,liver,kidney,lung\na.png,1,0,0\n", "unknown class column 'lung'"),
    ("path,liver,kidney,other\na.png,1,0,0\nb.png,1,yes,0\n", "line 3: column 'kidney' has 'yes'"),
    ("path,liver,kidney,other\na.png,1,2,0\n", "line 2: column 'kidney' has '2'"),
    ("path,liver,kidney\na.png,1,0\n", "missing class column(s) other"),
    ("file,liver,kidney,other\na.png,1,0,0\n", "no 'path' column"),
    ("path,liver,kidney,other\na.png,1,,0\n", "line 2: labelled row has no value for 'kidney'"),
    ("path,frame,liver,kidney,other\na.png,x,1,0,0\n", "line 2: frame 'x'"),
    ("path,liver,kidney,other\na.png,1,0,0\n./a.png,0,1,0\n", "line 3: duplicate row for a.png"),
])
def test_bad_labels_csv_one_line_error_before_walk(export, tmp_path, csv, expected):
    labels = tmp_path / "labels.csv"
    labels.write_text(csv)
    with pytest.raises(UsclfError) as e:
        ingest(export, tmp_path / "cache", labels, IngestConfig(size=32, classes=CLASSES), progress=False)
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "cache").exists()


def test_salt_from_config_env_or_random(export, tmp_path, monkeypatch):
    def pids(salt, name):
        ingest(export, tmp_path / name, cfg=IngestConfig(size=16, classes=CLASSES, salt=salt), progress=False)
        return open_dataset(tmp_path / name).manifest["patient_id"].tolist()

    monkeypatch.delenv("USCLF_PATIENT_SALT", raising=False)
    assert pids("s1", "a") == pids("s1", "b") != pids("s2", "c")
    assert pids(None, "d") != pids(None, "e")                              # random, unsaved salt
    monkeypatch.setenv("USCLF_PATIENT_SALT", "s1")
    assert pids(None, "f") == pids("s1", "a")
    assert json.loads((tmp_path / "f" / "dataset.json").read_text())["salt_source"] == "env"


def test_worker_pool_gives_the_same_dataset(export, tmp_path):
    cfg = dict(size=16, classes=CLASSES, salt="x")
    ingest(export, tmp_path / "serial", cfg=IngestConfig(**cfg), progress=False)
    ingest(export, tmp_path / "pool", cfg=IngestConfig(**cfg, workers=2), progress=False)
    a, b = open_dataset(tmp_path / "serial"), open_dataset(tmp_path / "pool")
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    assert np.array_equal(a.images, b.images)


def test_output_inside_root_is_not_ingested(export):
    cfg = IngestConfig(size=16, classes=CLASSES)
    first = ingest(export, export / "cache", cfg=cfg, progress=False)
    second = ingest(export, export / "cache", cfg=cfg, progress=False)
    assert first.n_files == second.n_files == 13 and second.n_frames_kept == 10


def test_empty_or_unreadable_inputs(tmp_path):
    cfg = IngestConfig(size=16, classes=CLASSES)
    with pytest.raises(UsclfError, match="input folder not found"):
        ingest(tmp_path / "nope", tmp_path / "o", cfg=cfg, progress=False)
    (tmp_path / "empty" / "exam1").mkdir(parents=True)
    with pytest.raises(UsclfError, match="no files under"):
        ingest(tmp_path / "empty", tmp_path / "o", cfg=cfg, progress=False)
    bad = tmp_path / "bad" / "exam1"
    bad.mkdir(parents=True)
    (bad / "a.png").write_bytes(b"")
    (bad / "b.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI" + b"\xff" * 40)
    with pytest.raises(UsclfError, match="no B-mode frames kept from 2 file"):
        ingest(tmp_path / "bad", tmp_path / "o", cfg=cfg, progress=False)
    rep = pd.read_csv(tmp_path / "o" / "ingest_report.csv", dtype=str, keep_default_na=False)
    assert list(rep["status"]) == ["skipped", "skipped"] and rep["reason"].str.len().min() > 0
    with pytest.raises(UsclfError, match="size must be"):
        ingest(tmp_path / "bad", tmp_path / "o", cfg=IngestConfig(size=2), progress=False)
