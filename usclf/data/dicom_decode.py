"""DICOM part of `usclf.data.readers` (shared records and conversions: `usclf.data.frames`): dataset checks, pixel decoding, ultrasound region metadata.

Compressed transfer syntaxes are decoded by pydicom's plugins; the packages that provide them are
chosen for a permissive licence (a hospital may embed this tool in a product), never GPL:

    transfer syntax (UID 1.2.840.10008.)   decoded by (licence)
    JPEG Baseline 8-bit     1.2.4.50        python-gdcm (Apache-2.0; GDCM BSD-3), Pillow (MIT-CMU)
    JPEG Lossless P14, SV1  1.2.4.57, .70   python-gdcm: the only permissive plugin (pylibjpeg-libjpeg
                                            is GPL-3, not used)
    JPEG-LS lossless, near  1.2.4.80, .81   pyjpegls (MIT; CharLS BSD-3), python-gdcm
    JPEG 2000 lossless, any 1.2.4.90, .91   pylibjpeg + pylibjpeg-openjpeg (MIT; OpenJPEG BSD-2),
                                            python-gdcm, Pillow
    RLE Lossless            1.2.5           pylibjpeg + pylibjpeg-rle (MIT), pydicom's own (MIT)

pydicom tries the available plugins in its own order and falls back to the next one when one fails.
Video transfer syntaxes (MPEG-2, MPEG-4, HEVC cine loops) have no pydicom decoder: such files are
skipped with that reason.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .frames import MIN_SIDE, Frame, Skip, error_reason, minmax_uint8, to_uint8, too_small

# SOP classes that hold ultrasound pictures: US Image / US Multi-frame (current and retired) and
# Secondary Capture (single and multi-frame), as PACS exports of freeze frames often use SC.
US_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.6.2",
    "1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.5.1.4.1.1.3",
}
SC_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4",
}
_SPATIAL_2D = 1     # RegionSpatialFormat: 1 = 2D (tissue or colour flow), 2 = M-mode, 3 = spectral, ...
_UNITS_CM = 3       # PhysicalUnitsXDirection: 3 = cm


def dicom_frames(path: Path) -> Iterator[Frame | Skip]:
    """Frames of one DICOM file (any transfer syntax with an installed decoder), or Skips."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError) as e:
        yield Skip(f"corrupt DICOM ({type(e).__name__}: {' '.join(str(e).split())[:120]})")
        return
    if not any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "PixelData", "StudyInstanceUID")):
        yield Skip("corrupt or truncated DICOM (no readable attributes)")
        return
    reason = _not_ultrasound(ds)
    if reason:
        yield Skip(reason)
        return
    if "PixelData" not in ds:
        yield Skip("truncated DICOM (image attributes but no pixel data)" if "Rows" in ds
                   else "DICOM without pixel data (e.g. a report)")
        return
    _ensure_transfer_syntax(ds)
    reason = _decoder_problem(ds.file_meta.TransferSyntaxUID)
    if reason:
        yield Skip(reason)
        return
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if not rows or not cols:
        yield Skip("corrupt DICOM (pixel data without Rows / Columns)")
        return
    if min(rows, cols) < MIN_SIDE:  # every frame has this size: no need to decode any
        yield Skip(too_small(cols, rows))
        return
    meta = _dicom_meta(ds)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        _check_pixel_length(ds, n_frames)
    except ValueError as e:
        yield Skip(f"truncated DICOM pixel data ({e})")
        return
    from pydicom.pixels import iter_pixels

    it = iter_pixels(ds)
    for i in range(n_frames):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = next(it)
            yield Frame(_dicom_to_uint8(arr, ds, photometric), i, dict(meta, n_frames=n_frames))
        except StopIteration:
            yield Skip("DICOM has fewer frames than NumberOfFrames", i)
        except Exception as e:  # a broken frame skips that frame (and the rest, as the stream is lost)
            yield Skip(error_reason(e), i)
            for j in range(i + 1, n_frames):
                yield Skip("not decoded after an earlier frame failed", j)
            return


def _not_ultrasound(ds) -> str | None:
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop = str(ds.get("SOPClassUID", "") or "").strip()
    if modality == "US" or sop in US_SOP_CLASSES:
        return None
    if modality in ("", "OT", "SC") and (sop in SC_SOP_CLASSES or sop == ""):
        return None
    what = f"Modality {modality}" if modality else f"SOP class {sop}"
    return f"not ultrasound ({what})"


def _decoder_problem(ts) -> str | None:
    """Why pixels of this transfer syntax cannot be decoded here (None when they can)."""
    if not ts.is_compressed:
        return None
    from pydicom.pixels import get_decoder

    try:
        dec = get_decoder(ts)
    except NotImplementedError:
        return f"unsupported transfer syntax ({ts.name}, {ts}): no pixel decoder exists"
    if not dec.is_available:
        missing = "; ".join(dec.missing_dependencies) or "no plugin"
        # pydicom's list names GPL plugins too; the permissive choice is in this module's docstring
        return f"no decoder installed for {ts.name} ({ts}); see usclf.data.dicom_decode ({missing})"
    return None


def _ensure_transfer_syntax(ds) -> None:
    """Raw datasets (no file meta) need the transfer syntax they were read with to decode pixels."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    fm = getattr(ds, "file_meta", None)
    if fm is not None and "TransferSyntaxUID" in fm:
        return
    if fm is None:
        ds.file_meta = fm = FileMetaDataset()
    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = True, True
    fm.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                            ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _check_pixel_length(ds, n_frames: int) -> None:
    """Native pixel data shorter than rows x cols x samples x bits x frames means a truncated file."""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
    expected = rows * cols * spp * n_frames * bits // 8
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "YBR_FULL_422":
        expected = expected // 3 * 2
    got = len(ds.PixelData)
    if got < expected:
        raise ValueError(f"{got} of {expected} bytes")


def _dicom_meta(ds) -> dict[str, Any]:
    def s(name: str) -> str:
        v = ds.get(name, "")
        return str(v).strip() if v is not None else ""

    date = s("StudyDate")
    if len(date) == 8 and date.isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    region, spacing = us_region(ds)
    return {"format": "dicom", "patient_id": s("PatientID"), "study_uid": s("StudyInstanceUID"),
            "modality": s("Modality"), "vendor": s("Manufacturer"), "study_date": date,
            "sop_class": s("SOPClassUID"), "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
            "region": region, "pixel_spacing_mm": spacing}


def us_region(ds) -> tuple[tuple[int, int, int, int] | None, float | None]:
    """(x0, y0, x1, y1) of the 2D scan region (DICOM inclusive bounds) and its x spacing in mm.

    From the Sequence of Ultrasound Regions (0018,6011). Several 2D regions happen on split / dual
    screens and with a small reference image beside the live one: the largest is the main image.
    (None, None) without a usable 2D region; spacing is None unless the x units are cm.
    """
    best, best_area = None, -1
    for item in ds.get("SequenceOfUltrasoundRegions", None) or []:
        try:
            if int(item.get("RegionSpatialFormat", -1)) != _SPATIAL_2D:
                continue
            box = tuple(int(item.get(k)) for k in ("RegionLocationMinX0", "RegionLocationMinY0",
                                                    "RegionLocationMaxX1", "RegionLocationMaxY1"))
        except (TypeError, ValueError):
            continue
        area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
        if box[2] >= box[0] and box[3] >= box[1] and area > best_area:
            best, best_area = (box, item), area
    if best is None:
        return None, None
    box, item = best
    spacing = None
    try:
        if int(item.get("PhysicalUnitsXDirection", -1)) == _UNITS_CM:
            dx = abs(float(item.get("PhysicalDeltaX")))
            spacing = dx * 10.0 if np.isfinite(dx) and dx > 0 else None
    except (TypeError, ValueError):
        spacing = None
    return box, spacing


def _dicom_to_uint8(arr: np.ndarray, ds, photometric: str) -> np.ndarray:
    """One decoded frame -> uint8 gray or RGB (YBR was already converted to RGB by pydicom)."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut
        return np.ascontiguousarray(to_uint8(apply_color_lut(arr, ds)))
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = _window_uint8(arr, ds) if arr.ndim == 2 else _rgb_uint8(arr, ds)
    if photometric == "MONOCHROME1":
        arr = 255 - arr
    return np.ascontiguousarray(arr)


def _first(v) -> float | None:
    if v is None or v == "":
        return None
    try:
        return float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str) else float(v)
    except (TypeError, ValueError, IndexError):
        return None


def _window_uint8(arr: np.ndarray, ds) -> np.ndarray:
    """Gray > 8 bit: rescale slope/intercept, then the DICOM window if given, else per-frame min-max."""
    a = arr.astype(np.float32) * float(_first(ds.get("RescaleSlope")) or 1.0) \
        + float(_first(ds.get("RescaleIntercept")) or 0.0)
    c, w = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if c is None or w is None or w <= 1:
        return minmax_uint8(a)
    # DICOM PS3.3 C.11.2.1.2 linear window
    y = ((a - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
    return np.clip(y + 0.5, 0, 255).astype(np.uint8)


def _rgb_uint8(arr: np.ndarray, ds) -> np.ndarray:
    """16-bit colour: scale by the stored bit depth so channels keep their relative values."""
    bits = int(ds.get("BitsStored", 16) or 16)
    scale = 255.0 / float((1 << bits) - 1)
    return np.clip(arr.astype(np.float32) * scale + 0.5, 0, 255).astype(np.uint8)
