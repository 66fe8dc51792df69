"""`usclf simulate`: a fake PACS export of abdominal ultrasound exams + labels.csv (docs/design.md §11).

For demos and tests only; results on it are never clinical results. Layout: `out/<exam>/<frame files>`
and `out/labels.csv` (path, frame, exam_id, patient_id, one 0/1 column per class, doppler).
Label combinations are solved once so that per-frame class rates match `class_freq`, then dealt out
stratified (exact counts up to rounding) with exam-level correlation: frames are sorted by an anatomical
region key plus noise and cut into exams, so an exam is mostly a liver, kidney or pelvic study.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy.optimize import nnls

from ..errors import UsclfError
from ..paths import check_out_dir
from .manifest import DEFAULT_CLASSES
from .sim_organs import ORGANS, VENDORS, make_exam_style, render_frame

# Paper test set (Dadoun et al., Sec. 3.1 / Table 1): labels per class over 1242 images.
PAPER_TEST_COUNTS = {"liver": 555, "other": 315, "kidney": 316, "spleen": 135, "gallbladder": 115,
                     "pancreas": 72, "bladder": 58}
PAPER_TEST_IMAGES = 1242

# Plausible label sets with prior weights (the solver keeps close to them while matching class_freq)
# and an anatomical region key (0 right upper quadrant ... 3 pelvis) for exam-level correlation.
TEMPLATES: list[tuple[tuple[str, ...], float, float]] = [
    (("liver",), 3.0, 0.3), (("liver", "gallbladder"), 2.0, 0.2), (("liver", "kidney"), 2.0, 0.8),
    (("liver", "pancreas"), 1.0, 0.6), (("liver", "gallbladder", "pancreas"), 0.3, 0.4),
    (("gallbladder",), 0.5, 0.1), (("pancreas",), 0.6, 1.3), (("kidney",), 1.5, 1.5),
    (("spleen", "kidney"), 1.2, 2.0), (("spleen",), 1.0, 2.2), (("spleen", "pancreas"), 0.2, 1.8),
    (("bladder",), 1.0, 3.0),
]
EXAM_KEY_NOISE = 0.45
SURNAMES = ("DOE", "MARTIN", "DUBOIS", "BERNARD", "PETIT", "DURAND", "LEROY", "MOREAU", "SIMON", "GARCIA")
GIVEN = ("JOHN", "MARIE", "PIERRE", "ANNE", "LUC", "CLAIRE", "PAUL", "JULIE", "MARC", "SOPHIE")
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


def _paper_freq() -> dict[str, float]:
    return {c: n / PAPER_TEST_IMAGES for c, n in PAPER_TEST_COUNTS.items()}


@dataclass
class SimulateConfig:
    """Simulator settings; defaults from docs/design.md §11 and the paper's test-set label counts."""
    exams: int = 20
    patients: int | None = None          # None: ~0.7 * exams, so some patients have several exams
    size: int = 128                      # square export frame (pixels); the scan sector sits inside it
    format: str = "png"                  # png | dicom | mixed (png + jpg + dicom, chosen per exam)
    frames_min: int = 8                  # docs/design.md §11: 8-16 frames per exam
    frames_max: int = 16
    doppler_rate: float = 0.05           # fraction of colour-Doppler frames (ingest drops them)
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    class_freq: dict[str, float] = field(default_factory=_paper_freq)  # paper test set, 1242 images
    seed: int = 0


def _check(cfg: SimulateConfig) -> tuple[list[str], dict[str, float], int]:
    if cfg.exams < 1:
        raise UsclfError(f"simulate: exams must be >= 1, got {cfg.exams}")
    patients = max(1, round(0.7 * cfg.exams)) if cfg.patients is None else cfg.patients
    if not 1 <= patients <= cfg.exams:
        raise UsclfError(f"simulate: patients must be between 1 and exams ({cfg.exams}), got {patients}")
    if cfg.size < 32:
        raise UsclfError(f"simulate: size must be >= 32 pixels, got {cfg.size}")
    if cfg.format not in ("png", "dicom", "mixed"):
        raise UsclfError(f"simulate: format must be png, dicom or mixed, got {cfg.format!r}")
    if not 1 <= cfg.frames_min <= cfg.frames_max:
        raise UsclfError(f"simulate: need 1 <= frames_min <= frames_max, "
                         f"got {cfg.frames_min}, {cfg.frames_max}")
    if not 0 <= cfg.doppler_rate < 1:
        raise UsclfError(f"simulate: doppler_rate must be in [0, 1), got {cfg.doppler_rate}")
    classes = list(cfg.classes)
    unknown = [c for c in classes if c not in ORGANS and c != "other"]
    if unknown or len(set(classes)) != len(classes) or not [c for c in classes if c != "other"]:
        raise UsclfError(f"simulate: classes must be distinct names from {', '.join(ORGANS)}, other "
                         f"(at least one organ); got {', '.join(classes)}")
    missing = [c for c in classes if c not in cfg.class_freq]
    if missing:
        raise UsclfError(f"simulate: class_freq has no rate for {', '.join(missing)}")
    try:
        freq = {c: float(cfg.class_freq[c]) for c in classes}
    except (TypeError, ValueError):
        raise UsclfError(f"simulate: class_freq values must be numbers, got {cfg.class_freq}") from None
    bad = [c for c, f in freq.items() if not 0 <= f <= 1]
    if bad:
        raise UsclfError(f"simulate: class_freq['{bad[0]}'] must be in [0, 1], got {freq[bad[0]]}")
    return classes, freq, patients


def solve_combinations(classes: list[str],
                       freq: dict[str, float]) -> list[tuple[tuple[str, ...], float, float]]:
    """Probabilities of label sets (organ tuples; () = other) whose per-class rates equal `freq`.

    Returns [(organs, probability, region_key)]. Raises UsclfError when the rates are contradictory.
    """
    organs = [c for c in classes if c != "other"]
    tpl = [t for t in TEMPLATES if set(t[0]) <= set(organs)]
    covered = {o for t in tpl for o in t[0]}
    tpl += [((o,), 1.0, 1.5) for o in organs if o not in covered]
    with_other = "other" in classes
    f_other = freq["other"] if with_other else 0.0
    n = len(tpl) + with_other
    sets = [t[0] for t in tpl] + ([()] if with_other else [])
    big = 1e3
    rows, rhs = [], []
    for c in organs:
        rows.append([big * (c in s) for s in sets])
        rhs.append(big * freq[c])
    if with_other:
        rows.append([big * (s == ()) for s in sets])
        rhs.append(big * f_other)
    rows.append([big] * n)
    rhs.append(big)
    prior = np.array([t[1] for t in tpl] + ([0.0] if with_other else []))
    target = prior / prior.sum() * (1 - f_other)
    if with_other:
        target[-1] = f_other
    A = np.vstack([np.array(rows), np.eye(n)])
    w, _ = nnls(A, np.concatenate([rhs, target]))
    got = {c: float(sum(wi for s, wi in zip(sets, w) if c in s)) for c in organs}
    if with_other:
        got["other"] = float(w[-1])
    worst = max(classes, key=lambda c: abs(got[c] - freq[c]))
    if abs(got[worst] - freq[worst]) > 0.005 or abs(w.sum() - 1) > 0.005:
        raise UsclfError(f"simulate: class_freq cannot be met by any mix of organ combinations (e.g. "
                         f"{worst}: wanted {freq[worst]:.3f}, best {got[worst]:.3f}); organ rates must cover "
                         f"1 - other and none may exceed it")
    w = w / w.sum()
    keys = [t[2] for t in tpl] + ([-1.0] if with_other else [])
    return [(s, float(p), k) for s, p, k in zip(sets, w, keys)]


def plan_exams(cfg: SimulateConfig, classes: list[str], freq: dict[str, float], n_patients: int,
               rng: np.random.Generator) -> list[dict]:
    """Per exam: folder, patient index, vendor, and per frame the organ set and the Doppler flag."""
    combos = solve_combinations(classes, freq)
    sizes = rng.integers(cfg.frames_min, cfg.frames_max + 1, cfg.exams)
    total = int(sizes.sum())
    p = np.array([c[1] for c in combos])
    counts = np.floor(p * total).astype(int)
    rest = total - counts.sum()
    counts[np.argsort(-(p * total - counts), kind="stable")[:rest]] += 1
    ids = np.repeat(np.arange(len(combos)), counts)
    region = np.array([c[2] for c in combos])[ids]
    keys = np.where(region < 0, rng.uniform(-0.5, 3.5, total), region + rng.normal(0, EXAM_KEY_NOISE, total))
    ids = ids[np.argsort(keys, kind="stable")]
    doppler = np.zeros(total, bool)
    doppler[rng.choice(total, int(round(cfg.doppler_rate * total)), replace=False)] = True
    chunk_order = rng.permutation(cfg.exams)              # which slice of the sorted frames each exam gets
    starts = np.concatenate([[0], np.cumsum(sizes[chunk_order])])
    patient_of = np.concatenate([np.arange(n_patients), rng.integers(0, n_patients, cfg.exams - n_patients)])
    patient_of = patient_of[rng.permutation(cfg.exams)]
    exams = [dict() for _ in range(cfg.exams)]
    for j, e in enumerate(chunk_order):
        sl = slice(starts[j], starts[j + 1])
        perm = rng.permutation(int(sizes[e]))
        exams[e] = dict(combos=[combos[i][0] for i in ids[sl][perm]], doppler=doppler[sl][perm].tolist())
    for e, ex in enumerate(exams):
        ex.update(index=e, folder=f"exam_{e:05d}", patient=int(patient_of[e]),
                  vendor=int(rng.integers(len(VENDORS))),
                  date=f"{rng.integers(2014, 2023)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
                  kind="png" if cfg.format == "png" else "dicom" if cfg.format == "dicom"
                  else str(rng.choice(["png", "jpg", "dicom"])))
    return exams


def _patient(seed: int, pid: int) -> dict:
    """Body habitus shared by all exams of one patient (fatty liver: brighter, more attenuating)."""
    rng = np.random.default_rng([seed, 2, pid])
    fatty = rng.random() < 0.25
    name = f"{SURNAMES[pid % 10]}^{GIVEN[(pid // 10 + 3 * pid) % 10]}{pid + 1}"
    return dict(id=f"PAT-{pid + 1:05d}", name=name,
                birth=f"{rng.integers(1935, 2005)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
                sex=str(rng.choice(["F", "M"])), liver_echo=1.35 if fatty else 1.0,
                atten=float(rng.uniform(1.2, 2.0) + 0.6 * fatty), scale=float(rng.uniform(0.85, 1.15)))


def _dicom(path: Path, frames: list[np.ndarray], pat: dict, ex: dict, seed: int, number: int) -> None:
    """Write a real DICOM file: one frame (H x W grey or H x W x 3 RGB) or a grey cine (F x H x W)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def uid(*key) -> str:  # deterministic per seed and exam, so reruns are byte-identical
        return generate_uid(entropy_srcs=[str(seed), ex["folder"], *map(str, key)])

    multi, rgb = len(frames) > 1, frames[0].ndim == 3
    pixels = np.stack(frames) if multi else frames[0]
    sop_class = US_MULTIFRAME_STORAGE if multi else US_IMAGE_STORAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid("sop", number)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.Modality, ds.Manufacturer = "US", VENDORS[ex["vendor"]]["name"].split()[0]
    ds.ManufacturerModelName = VENDORS[ex["vendor"]]["name"]
    ds.PatientID, ds.PatientName = pat["id"], pat["name"]
    ds.PatientBirthDate, ds.PatientSex = pat["birth"], pat["sex"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ex["date"]
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{seed % 1000:03d}{ex['index']:06d}"
    ds.StudyDescription = "ECHOGRAPHIE ABDOMINALE"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    if multi:
        ds.NumberOfFrames, ds.FrameTime = len(frames), 33.3
        ds.FrameIncrementPointer = (0x0018, 0x1063)
    ds.Rows, ds.Columns = frames[0].shape[:2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_exam(out: Path, ex: dict, pat: dict, cfg: SimulateConfig, classes: list[str]) -> list[dict]:
    rng = np.random.default_rng([cfg.seed, 1, ex["index"]])
    vendor = VENDORS[ex["vendor"]]
    date = f"{ex['date'][:4]}-{ex['date'][4:6]}-{ex['date'][6:]}"
    texts = ([pat["name"], pat["id"], date],
             ["C5-2 ABD", f"MI 1.{rng.integers(0, 4)} TIS 0.{rng.integers(1, 9)}"])
    st = make_exam_style(cfg.size, ex["vendor"], pat, texts, rng)
    folder = out / ex["folder"]
    folder.mkdir(parents=True)
    imgs = [render_frame(st, combo, rng, dop, k)
            for k, (combo, dop) in enumerate(zip(ex["combos"], ex["doppler"]))]
    files: list[tuple[str, list[int]]] = []             # (file name, frame indices it holds)
    if ex["kind"] in ("png", "jpg"):
        for k, img in enumerate(imgs):
            name = f"IMG_{k + 1:04d}.{ex['kind']}"
            if img.ndim == 3:
                arr = img[:, :, ::-1]                       # RGB -> cv2's BGR
            else:
                arr = np.repeat(img[:, :, None], 3, 2) if vendor["rgb_gray"] else img
            params = [cv2.IMWRITE_JPEG_QUALITY, vendor["jpeg"]] if ex["kind"] == "jpg" else []
            if not cv2.imwrite(str(folder / name), np.ascontiguousarray(arr), params):
                raise UsclfError(f"simulate: could not write {folder / name}")
            files.append((name, [k]))
    else:
        ext = "" if rng.random() < 0.25 else ".dcm"
        cine = rng.random() < 0.3                       # a run of B-mode frames saved as one multi-frame file
        k = 0
        while k < len(imgs):
            run = 1
            if cine and not ex["doppler"][k]:
                while run < 4 and k + run < len(imgs) and not ex["doppler"][k + run]:
                    run += 1
                cine = False
            name = f"{'CINE' if run > 1 else 'IM'}{k + 1:04d}{ext}"
            _dicom(folder / name, imgs[k:k + run], pat, ex, cfg.seed, k + 1)
            files.append((name, list(range(k, k + run))))
            k += run
    rows = []
    for name, ks in files:
        for f, k in enumerate(ks):
            combo = ex["combos"][k]
            row = dict(path=f"{ex['folder']}/{name}", frame=f, exam_id=ex["folder"], patient_id=pat["id"])
            row.update({c: int(c in combo) if c != "other" else int(not combo) for c in classes})
            row["doppler"] = int(ex["doppler"][k])
            rows.append(row)
    return rows


def simulate(out: str | Path, cfg: SimulateConfig, progress: bool = True) -> dict:
    """Write `cfg.exams` simulated exam folders and `labels.csv` under `out` (must be new or empty)."""
    from tqdm import tqdm

    classes, freq, n_patients = _check(cfg)
    out = check_out_dir(out)
    if out.exists() and any(out.iterdir()):
        raise UsclfError(f"simulate: output folder {out} is not empty; choose a new folder")
    t0 = time.perf_counter()
    exams = plan_exams(cfg, classes, freq, n_patients, np.random.default_rng([cfg.seed, 0]))
    out.mkdir(parents=True, exist_ok=True)
    patients = {p: _patient(cfg.seed, p) for p in sorted({ex["patient"] for ex in exams})}
    rows: list[dict] = []
    for ex in tqdm(exams, desc="simulate", unit="exam", disable=not progress):
        rows.extend(_write_exam(out, ex, patients[ex["patient"]], cfg, classes))
    df = pd.DataFrame(rows, columns=["path", "frame", "exam_id", "patient_id", *classes, "doppler"])
    tmp = out / "labels.csv.tmp"
    df.to_csv(tmp, index=False)
    tmp.replace(out / "labels.csv")
    seconds = time.perf_counter() - t0
    per_exam = df.groupby("patient_id")["exam_id"].nunique()
    summary = dict(out=str(out), exams=cfg.exams, patients=len(patients), frames=len(df),
                   doppler_frames=int(df["doppler"].sum()), files=int(df["path"].nunique()),
                   patients_with_several_exams=int((per_exam > 1).sum()),
                   per_class={c: int(df[c].sum()) for c in classes}, format=cfg.format, size=cfg.size,
                   seed=cfg.seed, seconds=round(seconds, 3),
                   frames_per_s=round(len(df) / max(seconds, 1e-9), 1))
    if progress:
        print(format_summary(summary))
    return summary


def format_summary(s: dict) -> str:
    """Human-readable summary of a simulate() result."""
    per = ", ".join(f"{c} {n} ({n / max(s['frames'], 1):.1%})" for c, n in s["per_class"].items())
    return (f"simulated {s['frames']} frames ({s['doppler_frames']} colour Doppler) in {s['files']} files, "
            f"{s['exams']} exams, {s['patients']} patients "
            f"({s['patients_with_several_exams']} with several exams) "
            f"-> {s['out']} [{s['seconds']:.1f} s, {s['frames_per_s']:.0f} frames/s]\nper class: {per}")
