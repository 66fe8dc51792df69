"""Issue 24's cases for `predict --dicom-sr` and `suggest` (see probe_cases.py). The SR cases copy one or two
exams of distinct patients, break their headers with pydicom, and read every written report back: a report
referencing another patient's instances is a "leak", an invalid UID or a copied malformed value "silent-wrong",
a study left out without its reason row in sr_skipped.csv "silent-wrong"."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Callable

import pandas as pd

from .probe_hardening import World, case, crashed, readonly_dir, refused, small_model, usclf


def exams_of_two_patients(w: World) -> list[str]:
    lab = pd.read_csv(w.raw / "labels.csv").drop_duplicates("exam_id")
    first = lab.drop_duplicates("patient_id")["exam_id"].tolist()
    return first[:2]


def sr_input(w: World, name: str, mutate: Callable | None, exams: int = 1) -> Path:
    """A case folder with `in/` (copies of exams of distinct patients, `mutate(ds, i)` applied to every DICOM
    of exam i) for `predict --dicom-sr`."""
    import pydicom

    d = w.case_dir(name)
    for i, ex in enumerate(exams_of_two_patients(w)[:exams]):
        shutil.copytree(w.raw / ex, d / "in" / ex)
        for f in sorted((d / "in" / ex).glob("*.dcm")) if mutate else []:
            ds = pydicom.dcmread(f)
            with warnings.catch_warnings():     # pydicom warns about the very values the case writes
                warnings.simplefilter("ignore")
                mutate(ds, i)
                ds.save_as(f)
    return d


def predict_sr(w: World, d: Path, sr: Path | None = None, timeout: float = 180):
    return usclf(w, "predict", "--model", w.model, "--input", d / "in", "--out", d / "pred.csv", "--quiet",
                 "--dicom-sr", sr or d / "sr", timeout=timeout)


def sources(d: Path) -> dict[str, str]:
    """SOPInstanceUID -> PatientID of every input DICOM."""
    import pydicom
    return {str(x.SOPInstanceUID): str(x.get("PatientID", "")) for x in
            (pydicom.dcmread(f, stop_before_pixels=True) for f in sorted((d / "in").rglob("*.dcm")))}


def sr_outcome(d: Path, r, reason: str, bad_value: str | None = None) -> tuple[str, str]:
    """ok when predict ended 0, wrote no SR spanning patients or holding an invalid UID / `bad_value`, and gave
    `reason` for the study it did not report."""
    import pydicom
    from pydicom.uid import UID

    bad = crashed(r)
    if bad or r.rc != 0:
        return bad or ("poor-message", f"exit {r.rc}: {(r.lines or [''])[-1][:160]}")
    src = sources(d)
    for f in sorted((d / "sr").glob("*.dcm")):
        sr = pydicom.dcmread(f)
        refs = {str(e.value) for e in sr.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
        patients = {src[u] for u in refs if u in src}
        if patients - {str(sr.PatientID)}:
            return "leak", f"{f.name}: PatientID {sr.PatientID} references instances of {sorted(patients)}"
        if not UID(str(sr.get("StudyInstanceUID", ""))).is_valid:
            return "silent-wrong", f"{f.name}: invalid StudyInstanceUID {sr.get('StudyInstanceUID')!r}"
        if bad_value and any(bad_value in str(e.value) for e in sr.iterall() if isinstance(e.value, str)):
            return "silent-wrong", f"{f.name}: copied the malformed value {bad_value[:20]!r}"
    skipped = d / "sr" / "sr_skipped.csv"
    reasons = pd.read_csv(skipped)["reason"].astype(str).tolist() if skipped.is_file() else []
    hit = [x for x in reasons if reason in x]
    if not hit:
        return "silent-wrong", f"no reason '{reason}' (reasons: {reasons[:2]}; stdout: {r.out.strip()[-120:]})"
    return "ok", hit[0][:200]


@case("leak", "two exam folders of different patients sharing one StudyInstanceUID, predict --dicom-sr")
def sr_shared_study_uid(w):
    uid = {}

    def share(ds, i):
        uid.setdefault(i, str(ds.StudyInstanceUID))
        ds.StudyInstanceUID = uid[0]
    d = sr_input(w, "sr-shared", share, exams=2)
    return sr_outcome(d, predict_sr(w, d), "shared by 2 patients")


@case("silent-wrong", "stray key=value to suggest (budget=5)")
def stray_suggest(w):
    d = w.case_dir("stray-suggest")
    return refused(usclf(w, "suggest", "--model", w.model, "--data", w.ds, "--budget", 3, "--out", d / "s",
                         "--quiet", "budget=5"), "budget=5")


def _drop_study_uid(ds, i):
    del ds.StudyInstanceUID


@case("silent-wrong", "DICOMs without StudyInstanceUID: the SR line says why no report")
def sr_no_study_uid(w):
    d = sr_input(w, "sr-no-uid", _drop_study_uid)
    r = predict_sr(w, d)
    out = sr_outcome(d, r, "no StudyInstanceUID")
    said = "no StudyInstanceUID" in r.out + r.err
    return ("poor-message", f"the SR line gives no reason: {r.out.strip()[-160:]}") if out[0] == "ok" and not said \
        else out


@case("silent-wrong", "StudyInstanceUID '' in every file of a study")
def sr_empty_uid(w):
    d = sr_input(w, "sr-empty-uid", lambda ds, i: setattr(ds, "StudyInstanceUID", ""))
    return sr_outcome(d, predict_sr(w, d), "no StudyInstanceUID")


@case("silent-wrong", "StudyInstanceUID 'not a uid!'")
def sr_invalid_uid(w):
    d = sr_input(w, "sr-bad-uid", lambda ds, i: setattr(ds, "StudyInstanceUID", "not a uid!"))
    return sr_outcome(d, predict_sr(w, d), "invalid StudyInstanceUID")


@case("silent-wrong", "suggest --labeled with image ids not in the dataset")
def suggest_unknown_labeled(w):
    d = w.case_dir("suggest-unknown")
    (d / "l.csv").write_text("image_id\nnot_an_id\n")
    return refused(usclf(w, "suggest", "--model", w.model, "--data", w.ds, "--budget", 3, "--out", d / "s",
                         "--labeled", d / "l.csv", "--quiet"), "not_an_id")


@case("silent-wrong", "suggest with a 32 px model on a 64 px dataset")
def suggest_size_mismatch(w):
    d = w.case_dir("suggest-size")
    return refused(usclf(w, "suggest", "--model", w.model, "--data", w.ds64, "--budget", 3, "--out", d / "s",
                         "--quiet"), "px")


@case("traceback", "a DICOM without SOPClassUID, predict --dicom-sr")
def sr_no_sop_class(w):
    d = sr_input(w, "sr-no-sopclass", lambda ds, i: delattr(ds, "SOPClassUID"))
    return sr_outcome(d, predict_sr(w, d), "no SOPClassUID")


@case("traceback", "predict --dicom-sr into a read-only folder")
def sr_readonly_dir(w):
    d = sr_input(w, "sr-ro", None)
    with readonly_dir(d / "ro") as ro:
        if ro is None:
            return "skipped", "cannot mount a read-only tmpfs here"
        out = refused(predict_sr(w, d, ro), "--dicom-sr")
    left = [p.name for p in d.iterdir() if p.name.startswith("pred")]
    return ("silent-wrong", f"rows written before the refusal: {left}") if out[0] == "ok" and left else out


@case("traceback", "suggest --labeled EMPTY.csv (0 bytes)")
def suggest_empty_labeled(w):
    d = w.case_dir("suggest-empty")
    (d / "l.csv").write_text("")
    return refused(usclf(w, "suggest", "--model", w.model, "--data", w.ds, "--budget", 3, "--out", d / "s",
                         "--labeled", d / "l.csv", "--quiet"), "empty")


@case("traceback", "suggest --out on a read-only folder")
def suggest_readonly_out(w):
    with readonly_dir(w.case_dir("suggest-ro") / "ro") as ro:
        if ro is None:
            return "skipped", "cannot mount a read-only tmpfs here"
        return refused(usclf(w, "suggest", "--model", w.model, "--data", w.ds, "--budget", 3, "--out", ro / "s",
                             "--quiet"), "cannot write")


@case("poor-message", "suggest with a 3-class model on the 7-class dataset")
def suggest_other_classes(w):
    d = w.case_dir("suggest-3class")
    m3 = small_model(w, d / "m3.pt", ["a", "b", "c"], 0.9)
    return refused(usclf(w, "suggest", "--model", m3, "--data", w.ds, "--budget", 3, "--out", d / "s",
                         "--quiet"), "other classes")


@case("poor-message", "predict --dicom-sr inside the input folder")
def sr_inside_input(w):
    d = sr_input(w, "sr-inside", None)
    return refused(predict_sr(w, d, d / "in" / "sr"), "inside the input folder")


@case("poor-message", "SR value with a control character (PatientName)")
def sr_control_character(w):
    d = sr_input(w, "sr-ctrl", lambda ds, i: setattr(ds, "PatientName", "Doe^Jane\x07"))
    return sr_outcome(d, predict_sr(w, d), "control character", bad_value="\x07")


@case("poor-message", "SR value longer than a LO (PatientID of 80 characters)")
def sr_long_lo(w):
    d = sr_input(w, "sr-long", lambda ds, i: setattr(ds, "PatientID", "P" * 80))
    return sr_outcome(d, predict_sr(w, d), "longer than 64", bad_value="P" * 80)


@case("poor-message", "a backslash splitting PatientID into two values")
def sr_backslash_patient_id(w):
    d = sr_input(w, "sr-backslash", lambda ds, i: setattr(ds, "PatientID", "PAT\\OTHER"))
    return sr_outcome(d, predict_sr(w, d), "PatientID holds 2 values", bad_value="OTHER")
