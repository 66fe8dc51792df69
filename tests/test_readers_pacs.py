"""DICOM as a PACS sends it: compressed transfer syntaxes and the ultrasound region sequence.

Every file is real: an uncompressed dataset made with pydicom, compressed with pydicom's encoders
(RLE, JPEG-LS via pyjpegls, JPEG 2000 via pylibjpeg-openjpeg) or, for JPEG Lossless which pydicom
cannot encode, with the small process-14 encoder below (and once with GDCM), then read back through
`iter_frames` and compared with the uncompressed file's frames.
"""
from __future__ import annotations

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import set_pixel_data
from pydicom.sequence import Sequence
from pydicom.uid import (JPEG2000, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, JPEGLossless,
                         JPEGLSLossless, JPEGLSNearLossless, RLELossless, UID, generate_uid)

from usclf.data.preprocess import prepare_frame
from usclf.data.readers import Frame, Skip, iter_frames

US_SF, US_MF = "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1"


def us_dataset(arr: np.ndarray, photometric: str, bits: int, **tags) -> Dataset:
    """Uncompressed US dataset holding `arr` (frames first when it is a cine)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    multi = arr.ndim == (4 if photometric == "RGB" else 3)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = US_MF if multi else US_SF
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.StudyInstanceUID = "US", "1.2.826.0.1.3680043.99.1"
    for k, v in tags.items():
        setattr(ds, k, v)
    set_pixel_data(ds, arr, photometric, bits)
    return ds


def read(path) -> tuple[list[Frame], list[Skip]]:
    items = list(iter_frames(path))
    return [i for i in items if isinstance(i, Frame)], [i for i in items if isinstance(i, Skip)]


def _base(h=48, w=64, seed=0) -> np.ndarray:
    """0..255 ramp plus a noise patch (codecs must not only see smooth data)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = ((xx * 4 + yy * 3) % 256).astype(np.uint8)
    a[10:30, 8:40] = rng.integers(0, 256, (20, 32))
    a[0, 0], a[-1, -1] = 0, 255
    return a


# name -> (pixel array, photometric, bits stored); 12-bit values are multiples of 16 so the 8-bit
# output keeps every step and "exact" means exact; the cine has 2 frames
IMAGES = {
    "u8_cine": (np.stack([_base(), _base(seed=1)]), "MONOCHROME2", 8),
    "u12": (_base().astype(np.uint16) * 16, "MONOCHROME2", 12),
    "u16": (_base().astype(np.uint16) * 257, "MONOCHROME2", 16),
    "rgb": (np.dstack([_base(), 255 - _base(), _base(seed=2)]), "RGB", 8),
}
# (transfer syntax, encoder kwargs, images, lossless); lossy ones must stay within 3 grey levels on
# average (J2K at 40 dB PSNR gives ~2)
SYNTAXES = [
    (RLELossless, {}, ("u8_cine", "u12", "u16", "rgb"), True),
    (JPEGLSLossless, {}, ("u8_cine", "u12", "u16", "rgb"), True),
    (JPEGLSNearLossless, {"jls_error": 2}, ("u8_cine", "u12", "rgb"), False),
    (JPEG2000Lossless, {}, ("u8_cine", "u12", "u16", "rgb"), True),
    (JPEG2000, {"j2k_psnr": [40]}, ("u8_cine", "u12", "rgb"), False),
]
CASES = [(ts, kw, img, exact) for ts, kw, imgs, exact in SYNTAXES for img in imgs]


def _reference(tmp_path, name) -> list[np.ndarray]:
    arr, photometric, bits = IMAGES[name]
    us_dataset(arr, photometric, bits).save_as(tmp_path / "ref.dcm", enforce_file_format=True)
    frames, skips = read(tmp_path / "ref.dcm")
    assert not skips
    return [f.array for f in frames]


def _check(tmp_path, path, name, ts, exact):
    arr, _, _ = IMAGES[name]
    frames, skips = read(path)
    assert not skips, skips
    assert frames[0].meta["transfer_syntax"] == ts
    ref = _reference(tmp_path, name)
    assert len(frames) == len(ref)
    for got, want in zip(frames, ref):
        assert got.array.shape == want.shape and got.array.dtype == np.uint8
        diff = np.abs(got.array.astype(int) - want.astype(int))
        if exact:
            assert diff.max() == 0
        else:
            assert diff.mean() <= 3.0
            if ts == JPEGLSNearLossless:                     # encoded with NEAR = 2: a hard bound
                assert diff.max() <= 2
    if exact:  # the codec itself, before the 8-bit conversion
        np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, arr)


@pytest.mark.parametrize("ts, kw, name, exact", CASES, ids=[f"{c[0].keyword}-{c[2]}" for c in CASES])
def test_compressed_transfer_syntaxes_decode(tmp_path, ts, kw, name, exact):
    arr, photometric, bits = IMAGES[name]
    ds = us_dataset(arr, photometric, bits)
    ds.compress(ts, **kw)
    ds.save_as(tmp_path / "c.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "c.dcm").file_meta.TransferSyntaxUID == ts
    _check(tmp_path, tmp_path / "c.dcm", name, ts, exact)


# ---------------------------------------------------------------- JPEG Lossless (ITU T.81 process 14)
def ljpeg_encode(img: np.ndarray, bits: int, predictor: int) -> bytes:
    """Lossless JPEG (SOF3, one Huffman table, no restarts) of H x W or H x W x C samples."""
    x = img.astype(np.int64)
    x = x[..., None] if x.ndim == 2 else x
    h, w, nc = x.shape
    diffs = np.empty_like(x)
    for c in range(nc):
        s = x[..., c]
        ra, rb, rc = np.zeros_like(s), np.zeros_like(s), np.zeros_like(s)
        ra[:, 1:], rb[1:, :], rc[1:, 1:] = s[:, :-1], s[:-1, :], s[:-1, :-1]
        px = {1: ra, 2: rb, 3: rc, 4: ra + rb - rc, 5: ra + ((rb - rc) >> 1), 6: rb + ((ra - rc) >> 1),
              7: (ra + rb) >> 1}[predictor].copy()
        px[0, :], px[:, 0] = ra[0, :], rb[:, 0]          # T.81 H.1.2.1: first row left, first column up
        px[0, 0] = 1 << (bits - 1)
        d = (s - px) % 65536
        d[d > 32768] -= 65536
        diffs[..., c] = d
    out = []
    for d in diffs.reshape(-1).tolist():                 # interleaved: one sample per component per MCU
        ssss = abs(d).bit_length()
        out.append(format(ssss, "05b"))                  # 17 categories, all 5-bit codes 0..16
        if 0 < ssss < 16:
            out.append(format(d if d > 0 else d + (1 << ssss) - 1, f"0{ssss}b"))
    s = "".join(out)
    s += "1" * (-len(s) % 8)
    scan = int(s, 2).to_bytes(len(s) // 8, "big").replace(b"\xff", b"\xff\x00")
    dht = b"\xff\xc4" + (3 + 16 + 17).to_bytes(2, "big") + b"\x00" + bytes([0, 0, 0, 0, 17] + [0] * 11) \
        + bytes(range(17))
    sof = b"\xff\xc3" + (8 + 3 * nc).to_bytes(2, "big") + bytes([bits]) + h.to_bytes(2, "big") \
        + w.to_bytes(2, "big") + bytes([nc]) + b"".join(bytes([c + 1, 0x11, 0]) for c in range(nc))
    sos = b"\xff\xda" + (6 + 2 * nc).to_bytes(2, "big") + bytes([nc]) \
        + b"".join(bytes([c + 1, 0]) for c in range(nc)) + bytes([predictor, 0, 0])
    return b"\xff\xd8" + dht + sof + sos + scan + b"\xff\xd9"


LJ_CASES = [(JPEGLosslessSV1, 1, n) for n in IMAGES] + [(JPEGLossless, p, n) for p in range(1, 8)
                                                        for n in ("u8_cine", "u16")] \
    + [(JPEGLossless, 7, "u12"), (JPEGLossless, 5, "rgb")]


@pytest.mark.parametrize("ts, predictor, name", LJ_CASES, ids=[f"{c[0].keyword}-p{c[1]}-{c[2]}" for c in LJ_CASES])
def test_jpeg_lossless_decodes(tmp_path, ts, predictor, name):
    arr, photometric, bits = IMAGES[name]
    ds = us_dataset(arr, photometric, bits)
    frames = arr if arr.ndim == (4 if photometric == "RGB" else 3) else arr[None]
    ds.PixelData = encapsulate([ljpeg_encode(f, bits, predictor) for f in frames])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(tmp_path / "lj.dcm", enforce_file_format=True)
    _check(tmp_path, tmp_path / "lj.dcm", name, ts, exact=True)


def test_jpeg_lossless_written_by_gdcm_decodes(tmp_path):
    gdcm = pytest.importorskip("gdcm")
    arr, photometric, bits = IMAGES["u12"]
    us_dataset(arr, photometric, bits).save_as(tmp_path / "in.dcm", enforce_file_format=True)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(tmp_path / "in.dcm"))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(tmp_path / "gdcm.dcm"))
    assert writer.Write()
    _check(tmp_path, tmp_path / "gdcm.dcm", "u12", JPEGLosslessSV1, exact=True)


def test_video_transfer_syntax_skipped_with_reason(tmp_path):
    ds = us_dataset(_base(), "MONOCHROME2", 8)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.102")       # MPEG-4 AVC/H.264
    ds.PixelData = encapsulate([b"\x00\x00\x00\x01\x67" + bytes(200)])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "cine.dcm", enforce_file_format=True)
    frames, skips = read(tmp_path / "cine.dcm")
    assert not frames and len(skips) == 1 and skips[0].frame_index is None
    assert skips[0].reason.startswith("unsupported transfer syntax (MPEG-4 AVC/H.264")
    assert "1.2.840.10008.1.2.4.102" in skips[0].reason


# ---------------------------------------------------------------- Sequence of Ultrasound Regions
def _region(x0, y0, x1, y1, spatial=1, units=3, dx=0.025) -> Dataset:
    it = Dataset()
    it.RegionSpatialFormat, it.RegionDataType, it.RegionFlags = spatial, 1, 0
    it.RegionLocationMinX0, it.RegionLocationMinY0 = x0, y0
    it.RegionLocationMaxX1, it.RegionLocationMaxY1 = x1, y1
    it.PhysicalUnitsXDirection = it.PhysicalUnitsYDirection = units
    it.PhysicalDeltaX = it.PhysicalDeltaY = dx
    return it


def _screen(seed=0):
    """A linear-probe screen: speckle rectangle (x 20..139, y 16..111), a vendor banner touching it."""
    rng = np.random.default_rng(seed)
    clean = np.zeros((120, 160), np.uint8)
    clean[16:112, 20:140] = rng.gamma(2.0, 40, (96, 120)).clip(30, 255).astype(np.uint8)
    screen = clean.copy()
    screen[0:14] = 220                                                  # banner, 2 px above the image
    cv2.putText(screen, "ACME L12 ST. MARY", (4, 11), cv2.FONT_HERSHEY_PLAIN, 0.8, 0, 1)
    cv2.putText(screen, "12MHz 4cm", (100, 119), cv2.FONT_HERSHEY_PLAIN, 0.6, 255, 1)
    return clean, screen


def test_region_sequence_meta_and_crop_removes_burned_in_text(tmp_path):
    clean, screen = _screen()
    regions = Sequence([_region(0, 0, 159, 119, spatial=3),             # spectral trace: not 2D, ignored
                        _region(0, 0, 31, 23, dx=0.1),                  # a small 2D reference view
                        _region(20, 16, 139, 111)])                     # the main 2D image: largest
    us_dataset(screen, "MONOCHROME2", 8, SequenceOfUltrasoundRegions=regions).save_as(
        tmp_path / "r.dcm", enforce_file_format=True)
    frames, skips = read(tmp_path / "r.dcm")
    assert not skips
    meta = frames[0].meta
    assert meta["region"] == (20, 16, 139, 111)
    assert meta["pixel_spacing_mm"] == pytest.approx(0.25)
    got, reason = prepare_frame(frames[0].array, 64, region=meta["region"])
    want, _ = prepare_frame(clean, 64, region=meta["region"])
    assert reason == "" and np.array_equal(got, want)                  # banner and text left no trace
    assert np.array_equal(want, prepare_frame(clean[16:112, 20:140], 64)[0])
    today, _ = prepare_frame(frames[0].array, 64)                      # content crop alone keeps the banner
    assert not np.array_equal(today, want)
    stretched, _ = prepare_frame(frames[0].array, 64, region=meta["region"], resize="stretch")
    assert stretched.shape == (64, 64) and stretched.min() >= 20       # 120 x 96 region fills the square


def test_region_spacing_units_and_fallbacks(tmp_path):
    clean, screen = _screen()
    cases = {"secs": Sequence([_region(20, 16, 139, 111, units=4)]),   # 4 = seconds: no mm spacing
             "mmode": Sequence([_region(20, 16, 139, 111, spatial=2)]),
             "none": None}
    for name, seq in cases.items():
        tags = {} if seq is None else {"SequenceOfUltrasoundRegions": seq}
        us_dataset(screen, "MONOCHROME2", 8, **tags).save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
    meta = read(tmp_path / "secs.dcm")[0][0].meta
    assert meta["region"] == (20, 16, 139, 111) and meta["pixel_spacing_mm"] is None
    for name in ("mmode", "none"):
        meta = read(tmp_path / f"{name}.dcm")[0][0].meta
        assert meta["region"] is None and meta["pixel_spacing_mm"] is None
    plain, _ = prepare_frame(screen, 64)
    exclusive, _ = prepare_frame(screen, 64, region=(20, 16, 160, 120))   # max bounds = Columns, Rows
    assert np.array_equal(exclusive, prepare_frame(screen[16:, 20:], 64)[0])
    for bad in ((20, 16, 161, 111), (-1, 0, 50, 50), (20, 16, 30, 111), (50, 50, 40, 60), ("a", 1, 2, 3)):
        assert np.array_equal(prepare_frame(screen, 64, region=bad)[0], plain), bad
