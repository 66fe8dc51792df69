"""Decode one file (DICOM, PNG, JPEG, BMP, TIFF) into frames, or say why it was skipped.

`iter_frames(path)` never raises: every problem (empty, truncated, corrupt, non-ultrasound DICOM, an
unexpected exception) becomes a `Skip` with a one-line reason. The format is detected by content, not
by extension, so DICOM files without extension or without the 128-byte preamble are read.
Frames are uint8, H x W (gray) or H x W x 3 (RGB); colour handling (Doppler, gray-as-RGB) is left to
`usclf.data.preprocess`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

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
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_JPEG_SIG = b"\xff\xd8\xff"
_OTHER_IMAGE_SIGS = (b"BM", b"II*\x00", b"MM\x00*")  # BMP, TIFF (little / big endian)


@dataclass
class Frame:
    """One decoded frame: `array` is H x W or H x W x 3 uint8 (RGB)."""
    array: np.ndarray
    frame_index: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Skip:
    """A file (frame_index None) or one frame that could not be used, with the reason."""
    reason: str
    frame_index: int | None = None


def sniff(head: bytes) -> str:
    """Format from the first bytes of a file: 'dicom', 'png', 'jpeg', 'image' or 'unknown'."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_SIG):
        return "png"
    if head.startswith(_JPEG_SIG):
        return "jpeg"
    if head.startswith(_OTHER_IMAGE_SIGS):
        return "image"
    # DICOM without preamble: a dataset starts with a group 0x0002 (file meta) or 0x0008 element, little
    # endian, whose element number is small; anything else is not worth a forced parse.
    if len(head) >= 8 and head[0:2] in (b"\x02\x00", b"\x08\x00") and head[3] == 0:
        return "dicom"
    return "unknown"


def iter_frames(path: str | Path) -> Iterator[Frame | Skip]:
    """Yield the frames of one file, or Skips with reasons; never raises for a bad file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            yield Skip("empty file (0 bytes)")
            return
        with open(path, "rb") as fh:
            head = fh.read(132)
        kind = sniff(head)
        if kind == "dicom":
            yield from _dicom_frames(path)
        elif kind in ("png", "jpeg", "image"):
            yield _raster_frame(path, kind)
        else:
            yield Skip("not an image (unrecognised content)")
    except Exception as e:  # one bad file never aborts an ingest
        yield Skip(_err(e))


def _err(e: BaseException) -> str:
    msg = " ".join(str(e).split())[:200]
    return f"error: {type(e).__name__}: {msg}"


# ---------------------------------------------------------------------------------------------- raster
def _raster_frame(path: Path, kind: str) -> Frame | Skip:
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    tail = data[-4096:].tobytes()
    # cv2 silently returns a grey-filled picture for a truncated JPEG, so check the end markers first.
    if kind == "png" and b"IEND" not in data[-64:].tobytes():
        return Skip("truncated PNG (no IEND chunk)")
    if kind == "jpeg" and b"\xff\xd9" not in tail:
        return Skip("truncated JPEG (no end-of-image marker)")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        return Skip(f"corrupt {kind.upper() if kind != 'image' else 'image'} (cannot decode)")
    img = _to_uint8(img)
    if img.ndim == 3:
        ch = img.shape[2]
        if ch == 1:
            img = img[:, :, 0]
        elif ch == 2:                      # gray + alpha
            img = img[:, :, 0]
        elif ch == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif ch == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        else:
            return Skip(f"unsupported image with {ch} channels")
    return Frame(np.ascontiguousarray(img), 0, {"format": kind})


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """uint16 -> /257 (full-range scaling); float or other -> per-image min-max."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    return minmax_uint8(img)


def minmax_uint8(arr: np.ndarray) -> np.ndarray:
    """Linear rescale of any numeric array to 0..255 uint8 (constant arrays -> 0)."""
    a = arr.astype(np.float32)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip((a - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- DICOM
def _dicom_frames(path: Path) -> Iterator[Frame | Skip]:
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
            yield Skip(_err(e), i)
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
    return {"format": "dicom", "patient_id": s("PatientID"), "study_uid": s("StudyInstanceUID"),
            "modality": s("Modality"), "vendor": s("Manufacturer"), "study_date": date,
            "sop_class": s("SOPClassUID")}


def _dicom_to_uint8(arr: np.ndarray, ds, photometric: str) -> np.ndarray:
    """One decoded frame -> uint8 gray or RGB (YBR was already converted to RGB by pydicom)."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut
        return np.ascontiguousarray(_to_uint8(apply_color_lut(arr, ds)))
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
