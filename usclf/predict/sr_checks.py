"""What `predict --dicom-sr` checks before a source header's values go into a structured report: the folder, the
UIDs, the Patient / General Study values and that a study belongs to one patient. Each problem is a reason
(a row of DIR/sr_skipped.csv), never an invalid SR file or a traceback."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import UsclfError
from ..paths import check_writable_dir

UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# the Patient / General Study attributes an SR copies (type 2: empty when absent) and their VRs (PS3.3 C.7.1.1,
# C.7.2.1); the patient's identity within one study must agree in every file
TYPE2 = {"PatientName": "PN", "PatientID": "LO", "PatientBirthDate": "DA", "PatientSex": "CS", "StudyDate": "DA",
         "StudyTime": "TM", "ReferringPhysicianName": "PN", "StudyID": "SH", "AccessionNumber": "SH"}
PATIENT = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
_MAX = {"LO": 64, "SH": 16, "CS": 16, "DA": 8, "TM": 16, "PN": 64}   # PN: per component group
_FORMAT = {"DA": re.compile(r"^\d{8}$"), "TM": re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$"),
           "CS": re.compile(r"^[A-Z0-9 _]*$")}
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")    # ESC (0x1b) is allowed: ISO 2022 character sets


def check_sr_dir(sr_dir: str | Path, root: Path) -> Path:
    """The --dicom-sr folder: not a file, not inside the input folder (its reports would be read back as inputs
    on the next run), and writable; checked before any prediction row is written."""
    p = Path(sr_dir)
    if p.exists() and not p.is_dir():
        raise UsclfError(f"--dicom-sr {p} is a file, not a folder")
    rp = p.resolve()
    if rp == root or root in rp.parents:
        raise UsclfError(f"--dicom-sr {p} is inside the input folder {root}: its reports would be read as inputs "
                         "on the next run; choose a folder outside it")
    return check_writable_dir(p, "--dicom-sr")


def uid_problem(ds, kw: str) -> str | None:
    """Why the header's `kw` cannot go into an SR, or None."""
    from pydicom.uid import UID

    if kw not in ds or ds[kw].value in (None, ""):
        return f"no {kw}"
    v = ds[kw].value
    if not isinstance(v, str) or not UID(v).is_valid:
        return f"invalid {kw} {str(v)[:70]!r}"
    return None


def value_problem(ds, kw: str, vr: str) -> str | None:
    """Why the Patient/Study value `kw` (of value representation `vr`) is malformed, or None."""
    if kw not in ds:
        return None
    v = ds[kw].value
    if v is None:
        return None
    if not isinstance(v, (str, bytes)) and hasattr(v, "__len__") and not hasattr(v, "family_name"):
        if len(v) > 1:
            return f"{kw} holds {len(v)} values (a backslash in it?)"
        v = v[0] if len(v) else ""
    s = str(v)
    if _CONTROL.search(s) or (vr != "PN" and "\\" in s):
        return f"{kw} holds a control character or backslash"
    groups = s.split("=") if vr == "PN" else [s]
    if any(len(g) > _MAX[vr] for g in groups):
        return f"{kw} is longer than {_MAX[vr]} characters (DICOM {vr})"
    if vr in _FORMAT and s.strip() and not _FORMAT[vr].match(s.strip()):
        return f"{kw} {s[:20]!r} is not a valid DICOM {vr} value"
    return None


def header_problem(ds) -> str | None:
    """The first reason this source header cannot be referenced by / copied into an SR, or None."""
    for kw in UIDS:
        why = uid_problem(ds, kw)
        if why:
            return why
    for kw, vr in TYPE2.items():
        why = value_problem(ds, kw, vr)
        if why:
            return why
    return None


def study_problem(heads: list) -> str | None:
    """Why the files of one StudyInstanceUID may not share one SR: another patient, disagreeing identities."""
    pids = {str(h.get("PatientID", "") or "") for h in heads}
    if len(pids) > 1:
        return (f"StudyInstanceUID shared by {len(pids)} patients (different PatientID): an SR never spans "
                "patients; fix the export's study UIDs")
    for kw in PATIENT[1:]:
        if len({str(h.get(kw, "") or "") for h in heads}) > 1:
            return f"the files of this study disagree on {kw}"
    return None
