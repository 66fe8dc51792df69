"""`usclf predict --dicom-sr` through the CLI on simulated DICOM exams: one Comprehensive SR per study, read
back with pydicom/highdicom: findings equal predict's rows, references to the source instances, patient/study
identity from the source and nothing else of its header, a rerun rewrites the same files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from conftest import calibrated
from usclf.cli import main
from usclf.data.cache import open_dataset
from usclf.data.ingest import IngestConfig, ingest
from usclf.data.simulate import SimulateConfig, simulate
from usclf.data.transforms import AugmentConfig
from usclf.eval.inference import infer
from usclf.models.heads import build_classifier
from usclf.models.modelfile import ModelInfo, save_model_file
from usclf.stages.common import preprocess_meta
from usclf.stages.scoring import class_scores

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def _items(seq, meaning):
    return [i for i in seq if i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sr")
    raw = tmp / "raw"
    simulate(raw, SimulateConfig(exams=3, size=48, seed=8, format="dicom", doppler_rate=0.0), progress=False)
    (raw / "labels.csv").unlink()
    ingest(raw, tmp / "ds", None, IngestConfig(size=36, salt="s"), progress=False)
    ds = open_dataset(tmp / "ds")
    torch.manual_seed(0)
    m = calibrated(build_classifier("resnet18", "multilabel", num_classes=len(ds.classes)), ds.images)
    th = np.median(class_scores("multilabel", infer(m, ds, np.arange(len(ds.manifest)), AugmentConfig(size=32))
                                ["out"]), axis=0)
    save_model_file(tmp / "m.pt", m, ModelInfo(ds.classes, "finetune", "supervised", thresholds=th.tolist(),
                                               preprocess=preprocess_meta(ds, AugmentConfig(size=32))))
    args = ["predict", "--model", str(tmp / "m.pt"), "--input", str(raw), "--out", str(tmp / "p.csv"),
            "--dicom-sr", str(tmp / "sr"), "--quiet"]
    return tmp, raw, args, th, ds.classes


def test_one_sr_per_study_with_predicts_findings_and_the_source_references(run, capsys):
    tmp, raw, args, th, classes = run
    assert main(args) == 0
    assert "structured reports (one per study)" in capsys.readouterr().out
    src = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in raw.rglob("*.dcm")}
    studies = {d.StudyInstanceUID for d in src.values()}
    files = sorted((tmp / "sr").glob("*.dcm"))
    assert len(files) == len(studies) == 3
    rows = pd.read_csv(tmp / "p.csv").query("status == 'predicted'")
    rows["study"] = [src[raw / p].StudyInstanceUID for p in rows["path"]]
    for f in files:
        sr = pydicom.dcmread(f)
        assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.Modality == "SR"
        mine = [d for d in src.values() if d.StudyInstanceUID == sr.StudyInstanceUID]
        assert mine, "SR of a study that is not in the input"
        assert (sr.PatientID, sr.PatientName) == (mine[0].PatientID, mine[0].PatientName)
        # identity only: no other value of the source header (device, description, dates of the series) is copied
        identity = {"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "SpecificCharacterSet"}
        copied = {e.keyword for e in mine[0] if e.keyword in sr and sr[e.keyword].value == e.value}
        assert copied - identity == set(), copied - identity
        assert sr.Manufacturer == "usclf" and "ManufacturerModelName" not in sr
        g = rows[rows["study"] == sr.StudyInstanceUID]
        findings = _items(sr.ContentSequence, "Finding")
        assert len(findings) == len(classes)
        for j, (c, fnd) in enumerate(zip(classes, findings)):
            items = fnd.ContentSequence
            prob = float(_items(items, "Organ presence probability")[0].MeasuredValueSequence[0].NumericValue)
            thr = float(_items(items, "Decision threshold (chosen on validation)")[0]
                        .MeasuredValueSequence[0].NumericValue)
            present = _items(items, "Organ presence")[0].ConceptCodeSequence[0].CodeMeaning
            assert prob == pytest.approx(g[f"p_{c}"].max(), abs=1e-6) and thr == pytest.approx(th[j], abs=1e-6)
            assert present == ("Present" if g[c].max() == 1 else "Absent"), c
        refs = _items(sr.ContentSequence, "Source image for image processing operation")[0].ContentSequence
        assert {r.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for r in refs} == \
            {d.SOPInstanceUID for d in mine}
        algo = _items(sr.ContentSequence, "Algorithm Version")[0].TextValue
        assert "model sha1" in algo
    names = [f.name for f in files]
    assert main(args) == 0                                              # rerun: the same files, none added
    assert sorted(f.name for f in (tmp / "sr").glob("*.dcm")) == names


def test_dicom_sr_into_a_file_is_one_line(run, tmp_path, capsys):
    tmp, raw, args, _, _ = run
    (tmp_path / "f").write_text("x")
    bad = [a if a != str(tmp / "sr") else str(tmp_path / "f") for a in args]
    bad[bad.index("--out") + 1] = str(tmp_path / "q.csv")
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file" in err and len(err.splitlines()) == 1
