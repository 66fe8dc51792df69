"""Readers and preprocessing on real files written here with pydicom / cv2."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space, set_pixel_data
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from usclf.data.preprocess import (coloured_fraction, crop_scan_region, prepare_frame, resize_square,
                                   to_gray)
from usclf.data.readers import Frame, Skip, iter_frames

US_MF = "1.2.840.10008.5.1.4.1.1.3.1"
US_SF = "1.2.840.10008.5.1.4.1.1.6.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
CT = "1.2.840.10008.5.1.4.1.1.2"


def dicom(arr, path, photometric="MONOCHROME2", modality="US", sop=US_SF, bits=8, preamble=True, **tags):
    """Write a real DICOM file with pydicom; tags are set on the dataset."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.Modality = sop, modality
    for k, v in tags.items():
        setattr(ds, k, v)
    set_pixel_data(ds, arr, photometric, bits)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:  # a bare dataset: no 128-byte preamble, no 'DICM', no file meta
        del ds.file_meta
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return path


def frames_of(path):
    items = list(iter_frames(path))
    return [i for i in items if isinstance(i, Frame)], [i for i in items if isinstance(i, Skip)]


def test_multiframe_dicom_frames_in_order_with_frame_axis_first(tmp_path):
    # 4 frames of 20 x 30: a reader that took the array as H x W x frames would give 20 frames of 30 x 4
    stack = np.stack([np.full((20, 30), 10 * (i + 1), np.uint8) for i in range(4)])
    p = dicom(stack, tmp_path / "cine.dcm", sop=US_MF, PatientID="P1", StudyInstanceUID="1.2.3",
              Manufacturer="ACME", StudyDate="20200131")
    frames, skips = frames_of(p)
    assert not skips
    assert [f.frame_index for f in frames] == [0, 1, 2, 3]
    assert all(f.array.shape == (20, 30) and f.array.dtype == np.uint8 for f in frames)
    assert [int(f.array.mean()) for f in frames] == [10, 20, 30, 40]
    assert frames[0].meta["patient_id"] == "P1" and frames[0].meta["study_uid"] == "1.2.3"
    assert frames[0].meta["vendor"] == "ACME" and frames[0].meta["study_date"] == "2020-01-31"


def test_dicom_without_extension_and_without_preamble(tmp_path):
    img = np.arange(600, dtype=np.uint8).reshape(20, 30)
    for name, pre in (("IMG0001", True), ("RAW0002", False)):
        p = dicom(img, tmp_path / name, preamble=pre)
        assert (open(p, "rb").read(132)[128:132] == b"DICM") == pre
        frames, skips = frames_of(p)
        assert not skips and len(frames) == 1
        np.testing.assert_array_equal(frames[0].array, img)


def test_rgb_secondary_capture_and_ybr_become_rgb(tmp_path):
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[:, :12, 2] = 200, 50, 120
    frames, _ = frames_of(dicom(rgb, tmp_path / "sc.dcm", "RGB", modality="OT", sop=SC))
    np.testing.assert_array_equal(frames[0].array, rgb)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    frames, _ = frames_of(dicom(ybr, tmp_path / "ybr.dcm", "YBR_FULL"))
    assert frames[0].array.shape == (16, 24, 3)
    assert np.abs(frames[0].array.astype(int) - rgb).max() <= 2


def test_non_ultrasound_no_pixels_and_truncated_dicom_are_skipped(tmp_path):
    img = np.full((20, 30), 80, np.uint8)
    _, skips = frames_of(dicom(img, tmp_path / "ct.dcm", modality="CT", sop=CT))
    assert skips[0].reason == "not ultrasound (Modality CT)"
    _, skips = frames_of(dicom(img, tmp_path / "mr.dcm", modality="MR", sop="1.2.840.10008.5.1.4.1.1.4"))
    assert "not ultrasound" in skips[0].reason
    nopix = Dataset()
    nopix.file_meta = FileMetaDataset()
    nopix.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    nopix.file_meta.MediaStorageSOPClassUID = nopix.SOPClassUID = US_SF
    nopix.file_meta.MediaStorageSOPInstanceUID = nopix.SOPInstanceUID = generate_uid()
    nopix.Modality = "US"
    nopix.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    _, skips = frames_of(tmp_path / "nopix.dcm")
    assert "without pixel data" in skips[0].reason
    full = open(dicom(np.stack([img] * 3), tmp_path / "mf.dcm", sop=US_MF), "rb").read()
    (tmp_path / "cut.dcm").write_bytes(full[:-500])
    frames, skips = frames_of(tmp_path / "cut.dcm")
    assert not frames and "truncated" in skips[0].reason
    (tmp_path / "head.dcm").write_bytes(full[:200])
    frames, skips = frames_of(tmp_path / "head.dcm")
    assert not frames and len(skips) == 1 and skips[0].reason


def test_16bit_window_and_monochrome1(tmp_path):
    a = (np.arange(600).reshape(20, 30) * 6).astype(np.uint16)  # 0 .. 3594, 12 bits stored
    frames, _ = frames_of(dicom(a, tmp_path / "w.dcm", bits=12, WindowCenter=1000, WindowWidth=1001))
    out = frames[0].array
    assert out.dtype == np.uint8
    assert out[a <= 499].max() == 0 and out[a >= 1501].min() == 255   # outside the window: clipped
    mid = out[a == 1002][0]
    assert abs(int(mid) - 128) <= 2                                      # centre of the window: mid-grey
    frames, _ = frames_of(dicom(a, tmp_path / "m1.dcm", "MONOCHROME1", bits=12))
    assert frames[0].array[0, 0] == 255 and frames[0].array[-1, -1] == 0  # inverted min-max


def test_raster_formats(tmp_path):
    gray = np.tile(np.arange(32, dtype=np.uint8) * 8, (24, 1))
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    bgr = np.zeros((24, 32, 3), np.uint8)
    bgr[..., 2] = 200                                   # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    cv2.imwrite(str(tmp_path / "red_alpha.png"), np.dstack([bgr, np.full((24, 32), 255, np.uint8)]))
    cv2.imwrite(str(tmp_path / "g16.png"), gray.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "g.jpg"), gray)
    (tmp_path / "noext").write_bytes((tmp_path / "g.png").read_bytes())
    assert np.array_equal(frames_of(tmp_path / "g.png")[0][0].array, gray)
    assert np.array_equal(frames_of(tmp_path / "noext")[0][0].array, gray)
    assert tuple(frames_of(tmp_path / "red.png")[0][0].array[0, 0]) == (200, 0, 0)
    assert tuple(frames_of(tmp_path / "red_alpha.png")[0][0].array[0, 0]) == (200, 0, 0)
    assert np.array_equal(frames_of(tmp_path / "g16.png")[0][0].array, gray)
    assert np.abs(frames_of(tmp_path / "g.jpg")[0][0].array.astype(int) - gray).max() < 12


@pytest.mark.parametrize("name, content, reason", [
    ("empty.png", b"", "empty file"),
    ("notes.txt", b"patient looked fine\n", "not an image"),
    ("fake.png", b"\x00\x01garbage" * 20, "not an image"),
])
def test_bad_files_skipped_with_reason(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    frames, skips = frames_of(tmp_path / name)
    assert not frames and reason in skips[0].reason


def test_truncated_png_and_jpeg_skipped(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)
    for ext in ("png", "jpg"):
        cv2.imwrite(str(tmp_path / f"ok.{ext}"), img)
        data = (tmp_path / f"ok.{ext}").read_bytes()
        (tmp_path / f"cut.{ext}").write_bytes(data[: len(data) // 2])
        frames, skips = frames_of(tmp_path / f"cut.{ext}")
        assert not frames and "truncated" in skips[0].reason


def test_doppler_detection_and_gray_as_rgb():
    rgb = np.full((10, 10, 3), 90, np.uint8)
    assert coloured_fraction(rgb, 40) == 0.0
    rgb[0, :5] = (255, 0, 0)                    # 5 of 100 pixels saturated red
    rgb[1, 0] = (120, 90, 90)                   # spread 30: not coloured at threshold 40
    assert coloured_fraction(rgb, 40) == pytest.approx(0.05)
    gray, reason = to_gray(rgb, 40, 0.01)
    assert gray is None and "colour Doppler" in reason
    gray, reason = to_gray(rgb, 40, 0.10)       # below 10 %: kept, converted to grey
    assert gray.shape == (10, 10) and gray[5, 5] == 90 and reason == ""


def _sector(h=220, w=260, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, 10), (180, 180), 0, 55, 125, 1, -1)     # fan from an apex at the top
    img = (mask * rng.gamma(2.0, 50, (h, w)).clip(1, 255)).astype(np.uint8)
    cv2.circle(img, (w // 2, 120), 25, 0, -1)                          # anechoic inside the sector
    cv2.circle(img, (60, 140), 20, 0, -1)                              # anechoic on its border
    return img, mask.astype(bool)


def test_crop_removes_burned_in_text():
    img, mask = _sector()
    txt = img.copy()
    cv2.putText(txt, "ACME 3.5", (2, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1)
    cv2.putText(txt, "ID", (225, 212), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1)
    ys, xs = np.nonzero(mask)
    text_px = txt != img
    # part of the top-left text lies inside the sector's bounding box: a plain bbox crop keeps it
    assert text_px[ys.min():ys.max() + 1, xs.min():xs.max() + 1].sum() > 20
    a, b = crop_scan_region(img), crop_scan_region(txt)
    assert np.array_equal(a, b)                                         # the text left no trace
    assert (a > 0).sum() == (img > 0).sum()                             # every tissue pixel kept
    assert abs(a.shape[0] - (np.ptp(ys) + 1)) <= 4 and abs(a.shape[1] - (np.ptp(xs) + 1)) <= 4


def test_prepare_frame_pads_resizes_and_drops_blank():
    img, _ = _sector()
    out, reason = prepare_frame(np.dstack([img] * 3), 64)               # gray saved as RGB
    assert out.shape == (64, 64) and out.dtype == np.uint8 and reason == ""
    out, reason = prepare_frame(np.zeros((50, 80), np.uint8), 64)
    assert out is None and "blank" in reason
    wide = resize_square(np.full((10, 40), 200, np.uint8), 20)          # padded top/bottom, not stretched
    assert wide.shape == (20, 20) and wide[0].max() == 0 and wide[10].min() == 200


def test_jpeg_compressed_multiframe_ybr_dicom(tmp_path):
    # PACS exports often hold JPEG Baseline frames in YBR_FULL_422 (decoded by pydicom via Pillow)
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    frames = [np.full((24, 32, 3), 30 + 60 * i, np.uint8) for i in range(3)]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = US_MF
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames = "US", 24, 32, 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([cv2.imencode(".jpg", f)[1].tobytes() for f in frames])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jpeg.dcm", enforce_file_format=True)
    got, skips = frames_of(tmp_path / "jpeg.dcm")
    assert not skips and [f.array.shape for f in got] == [(24, 32, 3)] * 3
    assert [int(f.array.mean()) for f in got] == [30, 90, 150]


# ------------------------------------------------- corrupt JPEG scans, tiny frames, 12-bit PNG, resize modes
def _textured(h=96, w=128, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip((xx + yy) % 200 + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8)


def test_jpeg_with_lost_scan_data_but_end_marker_is_skipped(tmp_path):
    img = _textured()
    data = cv2.imencode(".jpg", img)[1].tobytes()
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")   # first byte of the entropy-coded data
    n = len(data) - 2 - start
    cut = data[:start + n // 3] + data[start + 2 * n // 3:]          # middle third gone, FFD9 kept
    assert cut.endswith(b"\xff\xd9")
    assert cv2.imdecode(np.frombuffer(cut, np.uint8), cv2.IMREAD_UNCHANGED) is not None  # cv2 keeps it
    (tmp_path / "cut.jpg").write_bytes(cut)
    frames, skips = frames_of(tmp_path / "cut.jpg")
    assert not frames and skips[0].reason.startswith("corrupt JPEG data (libjpeg: ")
    assert skips[0].reason == "corrupt JPEG data (libjpeg: premature end of data segment)"
    (tmp_path / "ok.jpg").write_bytes(data)                          # the intact file still decodes
    frames, skips = frames_of(tmp_path / "ok.jpg")
    assert not skips and frames[0].array.shape == img.shape
    assert np.abs(frames[0].array.astype(int) - img).mean() < 4
    (tmp_path / "pad.jpg").write_bytes(data[:-2] + bytes(10) + data[-2:])  # padding after a whole scan
    frames, skips = frames_of(tmp_path / "pad.jpg")
    assert not skips and np.abs(frames[0].array.astype(int) - img).mean() < 4
    bgr = np.zeros((32, 48, 3), np.uint8)
    bgr[..., 2], bgr[:, :24, 1] = 200, 90                            # colour JPEG comes out as RGB
    cv2.imwrite(str(tmp_path / "c.jpg"), bgr)
    frames, skips = frames_of(tmp_path / "c.jpg")
    assert not skips and frames[0].array.shape == (32, 48, 3)
    assert np.abs(frames[0].array[20, 40].astype(int) - (200, 0, 0)).max() < 12


def test_tiny_images_are_skipped(tmp_path):
    cv2.imwrite(str(tmp_path / "dot.png"), np.full((1, 1), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "strip.jpg"), np.full((8, 40), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "ok.png"), _textured(16, 16))
    assert frames_of(tmp_path / "dot.png")[1][0].reason == "image too small (1x1 px < 16 px)"
    assert frames_of(tmp_path / "strip.jpg")[1][0].reason == "image too small (40x8 px < 16 px)"
    assert frames_of(tmp_path / "ok.png")[0][0].array.shape == (16, 16)
    frames, skips = frames_of(dicom(np.full((1, 1), 90, np.uint8), tmp_path / "dot.dcm"))
    assert not frames and skips[0].reason == "image too small (1x1 px < 16 px)" and skips[0].frame_index is None
    frames, skips = frames_of(dicom(np.zeros((3, 12, 40), np.uint8), tmp_path / "mf.dcm", sop=US_MF))
    assert not frames and [s.reason for s in skips] == ["image too small (40x12 px < 16 px)"]


def _png_with_sbit(arr: np.ndarray, bits: int | None) -> bytes:
    """16-bit PNG from cv2, with an sBIT chunk put right after IHDR (8-byte signature + 25-byte IHDR)."""
    import zlib
    png = cv2.imencode(".png", arr)[1].tobytes()
    if bits is None:
        return png
    body = bytes([bits])
    chunk = len(body).to_bytes(4, "big") + b"sBIT" + body + zlib.crc32(b"sBIT" + body).to_bytes(4, "big")
    return png[:33] + chunk + png[33:]


@pytest.mark.parametrize("values, sbit, scale", [
    (np.arange(4096), None, 4095),               # 12-bit data, no sBIT: the value range says 12 bits
    (np.arange(4096), 12, 4095),                 # 12-bit data with sBIT 12
    (np.arange(4096) % 1001, 12, 4095),          # dark 12-bit image: sBIT keeps it dark
    (np.arange(4096) % 1001, None, 1023),        # ... without sBIT it looks like 10-bit data
    (np.arange(4096) * 16 + np.arange(4096) // 256, 12, 65535),  # sBIT 12, samples scaled up (PNG spec)
    (np.arange(4096) * 16, None, 65535),         # true 16-bit data: /257 as before
])
def test_16bit_png_scaled_by_significant_bits(tmp_path, values, sbit, scale):
    a = values.astype(np.uint16).reshape(64, 64)
    (tmp_path / "a.png").write_bytes(_png_with_sbit(a, sbit))
    frames, skips = frames_of(tmp_path / "a.png")
    assert not skips
    want = np.floor(a.astype(np.float64) * 255.0 / scale + 0.5).astype(np.uint8)
    assert np.abs(frames[0].array.astype(int) - want).max() <= 1
    if values.max() >= 4095:
        assert frames[0].array.max() >= 250


def test_prepare_frame_resize_pad_or_stretch():
    rect = np.full((40, 80), 200, np.uint8)                          # 2:1
    for crop in (False, True):
        pad, _ = prepare_frame(rect, 32, crop=crop, resize="pad")
        assert pad.shape == (32, 32) and pad[:8].max() == 0 and pad[24:].max() == 0 and pad[8:24].min() == 200
        stretch, _ = prepare_frame(rect, 32, crop=crop, resize="stretch")
        assert stretch.shape == (32, 32) and stretch.min() == 200
    assert prepare_frame(rect, 32)[0].tolist() == prepare_frame(rect, 32, resize="pad")[0].tolist()
    with pytest.raises(ValueError, match="resize"):
        prepare_frame(rect, 32, resize="crop")
