"""Decode one file (DICOM, PNG, JPEG, BMP, TIFF) into frames, or say why it was skipped.

`iter_frames(path)` never raises: every problem (empty, truncated, corrupt, too small, non-ultrasound
DICOM, an unexpected exception) becomes a `Skip` with a one-line reason. The format is detected by
content, not by extension, so DICOM files without extension or without the 128-byte preamble are read.
Frames are uint8, H x W (gray) or H x W x 3 (RGB); colour handling (Doppler, gray-as-RGB) is left to
`usclf.data.preprocess`. DICOM decoding lives in `usclf.data.dicom_decode`; the `Frame` / `Skip`
records and the uint8 conversion both share live in `usclf.data.frames`.

Frame meta keys: every frame has `format` ('dicom', 'png', 'jpeg', 'image'), `region` and
`pixel_spacing_mm`; DICOM frames add `patient_id, study_uid, modality, vendor, study_date, sop_class,
transfer_syntax, n_frames`. `region` is (x0, y0, x1, y1), inclusive pixel bounds of the 2D scan region
from the DICOM ultrasound region sequence, or None; `pixel_spacing_mm` is its x spacing, or None.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from .dicom_decode import dicom_frames
from .frames import MIN_SIDE, Frame, Skip, error_reason, to_uint8, too_small

__all__ = ["MIN_SIDE", "Frame", "Skip", "iter_frames", "sniff", "too_small"]

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_JPEG_SIG = b"\xff\xd8\xff"
_OTHER_IMAGE_SIGS = (b"BM", b"II*\x00", b"MM\x00*")  # BMP, TIFF (little / big endian)
_DEPTHS = (8, 10, 12, 14, 16)                        # bit depths sensors and exporters use
# libjpeg warnings that mean lost or garbled scan data; others (an odd JFIF version, padding bytes
# after a complete scan: "extraneous bytes before marker") leave the picture whole
_JPEG_CORRUPT = ("corrupt jpeg data", "premature end")
_JPEG_BENIGN = ("extraneous bytes",)


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
            yield from dicom_frames(path)
        elif kind in ("png", "jpeg", "image"):
            yield _raster_frame(path, kind)
        else:
            yield Skip("not an image (unrecognised content)")
    except Exception as e:  # one bad file never aborts an ingest
        yield Skip(error_reason(e))


# ---------------------------------------------------------------------------------------------- raster
def _raster_frame(path: Path, kind: str) -> Frame | Skip:
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    raw = data.tobytes()
    # cv2 silently returns a grey-filled picture for a truncated JPEG, so check the end markers first.
    if kind == "png" and b"IEND" not in raw[-64:]:
        return Skip("truncated PNG (no IEND chunk)")
    if kind == "jpeg" and b"\xff\xd9" not in raw[-4096:]:
        return Skip("truncated JPEG (no end-of-image marker)")
    img = _decode_jpeg(raw) if kind == "jpeg" else None
    if isinstance(img, str):
        return Skip(img)
    if img is None:  # not JPEG, or a JPEG that libjpeg-turbo's API cannot give as gray/RGB (CMYK, 12-bit)
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        if img is None or img.size == 0:
            return Skip(f"corrupt {kind.upper() if kind != 'image' else 'image'} (cannot decode)")
        bits = _uint16_bits(img, _png_sbit(raw) if kind == "png" else None) if img.dtype == np.uint16 else 16
        img = _bgr_to_rgb(to_uint8(img, bits))
        if isinstance(img, str):
            return Skip(img)
    h, w = img.shape[:2]
    if min(h, w) < MIN_SIDE:
        return Skip(too_small(w, h))
    return Frame(np.ascontiguousarray(img), 0, {"format": kind, "region": None, "pixel_spacing_mm": None})


def _bgr_to_rgb(img: np.ndarray) -> np.ndarray | str:
    import cv2

    if img.ndim != 3:
        return img
    ch = img.shape[2]
    if ch in (1, 2):                       # gray (+ alpha)
        return img[:, :, 0]
    if ch == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if ch == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return f"unsupported image with {ch} channels"


def _decode_jpeg(raw: bytes) -> np.ndarray | str | None:
    """JPEG -> gray/RGB array, a skip reason for corrupt scan data, or None to let cv2 decode it."""
    import simplejpeg

    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(raw)
    except Exception:
        return None
    target = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}.get(colorspace, "RGB")
    # cv2 only prints libjpeg's "Corrupt JPEG data" warning and returns a grey-filled picture;
    # libjpeg-turbo in strict mode (simplejpeg) raises it instead, so the check is libjpeg's own.
    try:
        img = simplejpeg.decode_jpeg(raw, target, strict=True)
    except ValueError as e:
        msg = " ".join(str(e).split())
        low = msg.lower()
        if any(k in low for k in _JPEG_CORRUPT) and not any(k in low for k in _JPEG_BENIGN):
            detail = msg.split(":", 1)[1].strip() if low.startswith("corrupt jpeg data:") else msg
            return f"corrupt JPEG data (libjpeg: {detail[:1].lower() + detail[1:]})"
        try:
            img = simplejpeg.decode_jpeg(raw, target, strict=False)
        except Exception:
            return None
    if target == "CMYK":  # scan data checked; cv2 knows Adobe's inverted CMYK -> RGB
        return None
    return img[:, :, 0] if target == "GRAY" else img


def _png_sbit(raw: bytes) -> int | None:
    """Significant bits of the colour channels from a PNG's sBIT chunk (None without one)."""
    pos = len(_PNG_SIG)
    while pos + 8 <= len(raw):
        n, kind = int.from_bytes(raw[pos:pos + 4], "big"), raw[pos + 4:pos + 8]
        if kind == b"sBIT":
            body = raw[pos + 8:pos + 8 + n]
            colour_type = raw[25] if len(raw) > 25 else 0   # IHDR's colour type byte
            return max(body[:3 if colour_type in (2, 3, 6) else 1], default=0) or None
        if kind in (b"IDAT", b"IEND"):
            return None
        pos += 12 + n
    return None


def _uint16_bits(img: np.ndarray, sbit: int | None) -> int:
    """Bit depth a uint16 raster holds: sBIT when the data fit in it, else the smallest common depth."""
    colour = img if img.ndim == 2 else img[..., :1 if img.shape[2] <= 2 else 3]
    top = int(colour.max()) if colour.size else 0
    if sbit and 8 <= sbit < 16:
        # the PNG spec asks encoders to scale samples up to 16 bits; many exporters write them raw
        return sbit if top < (1 << sbit) else 16
    return next(d for d in _DEPTHS if top < (1 << d))
