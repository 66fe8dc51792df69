"""`usclf predict --dicom-sr DIR`: one DICOM Comprehensive SR per study of the DICOM inputs (highdicom).

Content tree (root container LOINC 18748-4 "Diagnostic imaging report"):
  - Algorithm Name (DCM 111001) "usclf <method>", Algorithm Version (DCM 111003) "<usclf version> model sha1 <12>"
  - per organ class a Finding container (DCM 121071) with Finding Site (SCT 363698007, the organ's SNOMED CT code
    where there is one), organ presence (value SCT 52101004 Present / 2667000 Absent), the exam's probability
    (largest frame score), the threshold used (chosen on validation) and the number of positive frames; concept
    names without a standard code use the local scheme "99USCLF" (PS3.16: "99" prefix for local schemes)
  - Source images (DCM 121322 "Source image for image processing operation") referencing every SOP instance read.
Presence follows the per-exam inventory of `predict`: present when at least one frame is at or above the
threshold. Patient and study identity (the Patient and General Study modules) are copied from the source
instances by highdicom, as the SR IODs require; nothing else of the source header is. The SR's instance UID is
derived from the study UID and the model's sha1, so a rerun rewrites the same file instead of adding another.
An SR never spans patients: a StudyInstanceUID whose files name two PatientIDs, a file with a missing or invalid
UID, a malformed Patient / Study value (control character, over-long, a backslash splitting it into values) give
no SR for that study but a reason row in DIR/sr_skipped.csv (sr_checks.py); the predictions are kept.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .sr_checks import TYPE2, UIDS, header_problem, study_problem, uid_problem


ORGAN_CODES = {  # SNOMED CT body structures
    "liver": ("10200004", "Liver"), "gallbladder": ("28231008", "Gallbladder"), "kidney": ("64033007", "Kidney"),
    "pancreas": ("15776009", "Pancreas"), "spleen": ("78961009", "Spleen"),
    "bladder": ("89837001", "Urinary bladder"),
}
SCHEME = "99USCLF"
_TYPE2 = tuple(TYPE2)


@dataclass
class SRResult:
    files: list[Path]
    n_studies: int
    n_non_dicom_files: int   # predicted files that are not DICOM (no SR for them; CSV rows only)
    n_refused: int = 0       # studies (or files without a usable study) not reported: rows of `skipped`
    skipped: Path | None = None   # DIR/sr_skipped.csv: study_instance_uid, path, n_files, reason
    why: str = ""            # when no SR was written: why not


SKIPPED = "sr_skipped.csv"


def read_rows(path: Path) -> pd.DataFrame:
    """Rows of a predict output file (.csv / .jsonl / .json / .parquet)."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".json", ".jsonl"):
        return pd.read_json(path, lines=True)
    return pd.read_csv(path)


def _headers(root: Path, paths) -> tuple[dict, dict, int]:
    """({path: identity} of usable DICOM files, {path: (study uid or '', reason)} of unusable ones, non-DICOM)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    heads, bad, other = {}, {}, 0
    for rel in paths:
        try:
            ds = pydicom.dcmread(root / rel, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            other += 1
            continue
        except Exception as e:  # a damaged header: pydicom raises many types
            bad[rel] = ("", f"unreadable DICOM header: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}")
            continue
        why = header_problem(ds)
        if why:
            study = "" if uid_problem(ds, "StudyInstanceUID") else str(ds.StudyInstanceUID)
            bad[rel] = (study, why)
        else:
            heads[rel] = _identity(ds)
    return heads, bad, other


def _identity(ds):
    """What the SR may take from a source header: the required (type 1/2) Patient and General Study attributes,
    type 2 ones empty when absent, and the instance's identity for the references; highdicom copies every Patient
    and Study attribute it is given, so it is given nothing else."""
    from pydicom.dataset import Dataset

    out = Dataset()
    for kw in ("SpecificCharacterSet", *UIDS, *_TYPE2):
        if kw in ds:
            setattr(out, kw, ds.data_element(kw).value)
        elif kw in _TYPE2:
            setattr(out, kw, "")
    return out


def _code(value: str, meaning: str, scheme: str = SCHEME):
    from highdicom.sr import CodedConcept
    return CodedConcept(value, scheme, meaning)


def _finding(cls: str, prob: float, th: float, n_pos: int):
    import highdicom.sr as sr

    site = ORGAN_CODES.get(cls)
    organ = _code(site[0], site[1], "SCT") if site else _code(f"organ-{cls}", cls)
    present = prob >= th
    item = sr.ContainerContentItem(_code("121071", "Finding", "DCM"), relationship_type="CONTAINS")
    unit = _code("1", "no units", "UCUM")
    item.ContentSequence = [
        sr.CodeContentItem(_code("363698007", "Finding Site", "SCT"), organ, relationship_type="CONTAINS"),
        sr.CodeContentItem(_code("presence", "Organ presence"),
                           _code("52101004", "Present", "SCT") if present else _code("2667000", "Absent", "SCT"),
                           relationship_type="CONTAINS"),
        sr.NumContentItem(_code("probability", "Organ presence probability"), float(prob), unit,
                          relationship_type="CONTAINS"),
        sr.NumContentItem(_code("threshold", "Decision threshold (chosen on validation)"), float(th), unit,
                          relationship_type="CONTAINS"),
        sr.NumContentItem(_code("positive-frames", "Frames at or above the threshold"), int(n_pos),
                          _code("{frames}", "frames", "UCUM"), relationship_type="CONTAINS"),
    ]
    return item


def _report(study_rows: pd.DataFrame, heads: list, classes: list[str], thresholds, meta: dict, series_uid: str,
            uid: str):
    import highdicom.sr as sr

    from .. import __version__

    root = sr.ContainerContentItem(_code("18748-4", "Diagnostic imaging report", "LN"))
    items = [sr.TextContentItem(_code("111001", "Algorithm Name", "DCM"), f"usclf {meta.get('method') or 'model'}",
                                relationship_type="CONTAINS"),
             sr.TextContentItem(_code("111003", "Algorithm Version", "DCM"),
                                f"{__version__} model sha1 {meta['model_sha1'][:12]}", relationship_type="CONTAINS")]
    for j, c in enumerate(classes):
        s = study_rows[f"p_{c}"].to_numpy(dtype=float)
        items.append(_finding(c, float(s.max()), float(thresholds[j]), int((s >= thresholds[j]).sum())))
    src = sr.ContainerContentItem(_code("121322", "Source image for image processing operation", "DCM"),
                                  relationship_type="CONTAINS")
    src.ContentSequence = [sr.ImageContentItem(_code("121322", "Source image for image processing operation", "DCM"),
                                               h.SOPClassUID, h.SOPInstanceUID, relationship_type="CONTAINS")
                           for h in heads]
    root.ContentSequence = [*items, src]
    return sr.ComprehensiveSR(evidence=heads, content=root, series_instance_uid=series_uid, series_number=900,
                              sop_instance_uid=uid, instance_number=1, manufacturer="usclf", is_complete=True)


def write_exam_reports(rows: pd.DataFrame, root: str | Path, out_dir: str | Path, classes: list[str],
                       thresholds, meta: dict) -> SRResult:
    """One SR per (PatientID, StudyInstanceUID) among the predicted rows whose file is DICOM; a study whose UID
    names several patients, or with a file whose UIDs / Patient / Study values are missing or malformed, gets no
    SR but a row of DIR/sr_skipped.csv (an SR written for it by an earlier run is removed)."""
    from pydicom.uid import generate_uid

    out_dir, root = Path(out_dir), Path(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = rows[rows["status"] == "predicted"]
    heads, bad, other = _headers(root, sorted(rows["path"].astype(str).unique()))
    skipped = [(st, rel, 1, why) for rel, (st, why) in bad.items() if not st]
    bad_of = {}
    for rel, (st, why) in bad.items():
        if st:
            bad_of.setdefault(st, []).append((rel, why))
    rows = rows[rows["path"].astype(str).isin(heads)]
    by_study: dict[str, list[str]] = {}
    for rel in sorted(rows["path"].astype(str).unique()):
        by_study.setdefault(str(heads[rel].StudyInstanceUID), []).append(rel)
    for st in bad_of:
        by_study.setdefault(st, [])
    files = []
    th = np.asarray(thresholds, float)
    for st in sorted(by_study):
        rels = by_study[st]
        key = [st, meta["model_sha1"]]
        uid = generate_uid(entropy_srcs=[*key, "sr"])
        path, tmp = out_dir / f"{uid}.dcm", out_dir / f".{uid}.dcm.tmp"
        why = None
        if st in bad_of:
            (rel0, why0), n = bad_of[st][0], len(bad_of[st])
            why = f"{n} file(s) of this study unusable, e.g. {rel0}: {why0}"
        why = why or study_problem([heads[r] for r in rels])
        if why is None:
            try:
                g = rows[rows["path"].astype(str).isin(rels)]
                doc = _report(g, [heads[p] for p in rels], classes, th, meta,
                              generate_uid(entropy_srcs=[*key, "series"]), uid)
                doc.save_as(tmp, enforce_file_format=True)
            except (ValueError, TypeError, AttributeError) as e:  # highdicom/pydicom refused a value
                tmp.unlink(missing_ok=True)
                why = f"the SR could not be built: {(str(e).splitlines() or [type(e).__name__])[0][:160]}"
        if why is not None:
            path.unlink(missing_ok=True)   # this study's SR from an earlier run (same derived name) would be stale
            skipped.append((st, (rels or [r for r, _ in bad_of.get(st, [])])[0], len(rels) + len(bad_of.get(st, [])),
                            why))
            continue
        os.replace(tmp, path)
        files.append(path)
    report = out_dir / SKIPPED
    df = pd.DataFrame(skipped, columns=["study_instance_uid", "path", "n_files", "reason"])
    df.to_csv(out_dir / f".{SKIPPED}.tmp", index=False)
    os.replace(out_dir / f".{SKIPPED}.tmp", report)
    why = ""
    if not files:
        why = ("no frame was predicted" if rows.empty and not heads and not bad and not other else
               "no predicted file is DICOM (PNG/JPEG inputs keep the rows only)" if not heads and not bad else
               f"no study could be reported, e.g. {skipped[0][1]}: {skipped[0][3]} (every reason in {report})")
    return SRResult(files, len(files), other, len(skipped), report, why)
